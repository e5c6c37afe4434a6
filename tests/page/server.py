# The fixture server of tests/test_page.c: serves the status page (the
# bytes khost embeds, written by the test to DIR/page.html) against a
# fixed status (status.json here: 2 pipelines x 16 partitions, hostile
# names, failed and paused rows, long paths), to check layout and escaping
# without a host.
#   python3 server.py PORT DIR
# GET / and /measure.html: the page and the layout probe (measure.html).
# GET /fail/: the page again, whose status answers 200 once, then 503
# (the error banner must appear and the last data stay).
import http.server
import os
import sys

port, folder = int(sys.argv[1]), sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
fails = [0]


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, code, ctype, body):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path in ("/api/v1/status", "/fail/api/v1/status"):
            if path.startswith("/fail/"):
                fails[0] += 1
                if fails[0] > 1:
                    return self.answer(503, "application/json",
                                       b'{"error":"down"}\n')
            with open(os.path.join(here, "status.json"), "rb") as f:
                return self.answer(200, "application/json", f.read())
        files = {"/": (folder, "page.html"), "/fail/": (folder, "page.html"),
                 "/measure.html": (here, "measure.html")}
        if path not in files:
            return self.answer(404, "text/plain", b"no such path\n")
        with open(os.path.join(*files[path]), "rb") as f:
            self.answer(200, "text/html; charset=utf-8", f.read())

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

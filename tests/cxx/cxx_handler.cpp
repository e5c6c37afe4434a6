// cxx_handler: a handler plugin written in C++ against <khost/plugin.h>,
// built with g++ -std=c++17 -Wall -Wextra -pedantic -Werror
// (tests/CMakeLists.txt) to show that the header is C++-clean, and run
// end to end by tests/test_cxx.c. It defers every message and acks them
// from tick, keeping the tokens in a std::vector; it counts what it
// handled in a file named by its `count_file` config key.
#include <khost/plugin.h>

#include <cstdio>
#include <new>
#include <string>
#include <vector>

namespace {

struct handler {
    const khost_host_api *api = nullptr;
    khost_host *host = nullptr;
    std::FILE *out = nullptr;
    std::vector<std::uint64_t> pending;
};

int init(const khost_init_args *args, void **state) {
    const char *path = args->api->config_get(args->host, "count_file");
    if (!path) {
        std::snprintf(args->errbuf, args->errbuf_size,
                      "cxx_handler: count_file = FILE is required");
        return -1;
    }
    auto *h = new (std::nothrow) handler;
    if (!h)
        return -1;
    h->api = args->api;
    h->host = args->host;
    h->out = std::fopen(path, "a");
    if (!h->out) {
        std::snprintf(args->errbuf, args->errbuf_size, "cxx_handler: %s", path);
        delete h;
        return -1;
    }
    std::setvbuf(h->out, nullptr, _IONBF, 0);
    khost_logf(h->api, h->host, KHOST_LOG_INFO, "cxx_handler: worker %d",
               static_cast<int>(args->worker_index));
    *state = h;
    return 0;
}

khost_result handle(void *state, const khost_message *m) {
    auto *h = static_cast<handler *>(state);
    std::string line =
        std::to_string(m->partition) + " " + std::to_string(m->offset) + "\n";
    std::fputs(line.c_str(), h->out);
    h->pending.push_back(m->ack_token);
    return KHOST_DEFERRED;
}

void flush(handler *h) {
    for (std::uint64_t t : h->pending)
        h->api->ack(h->host, t);
    h->pending.clear();
}

void tick(void *state, std::int64_t) {
    flush(static_cast<handler *>(state));
}

void on_revoke(void *state, const char *, std::int32_t) {
    flush(static_cast<handler *>(state));
}

void terminate(void *state) {
    auto *h = static_cast<handler *>(state);
    flush(h);
    std::fclose(h->out);
    delete h;
}

khost_plugin_descriptor make_descriptor() {
    khost_plugin_descriptor d{};
    d.struct_size = sizeof d;
    d.abi_major = KHOST_ABI_MAJOR;
    d.abi_minor = KHOST_ABI_MINOR;
    d.name = "cxx_handler";
    d.version = "1.0.0";
    d.description = "a C++ plugin: defers everything, acks at tick";
    d.init = init;
    d.handle = handle;
    d.terminate = terminate;
    d.on_revoke = on_revoke;
    d.tick = tick;
    return d;
}

const khost_plugin_descriptor descriptor = make_descriptor();

} // namespace

extern "C" KHOST_PLUGIN_EXPORT const khost_plugin_descriptor *
khost_plugin_entry(void) {
    return &descriptor;
}

/* Loads the plugin cdylib (libmobilemoe_executorch.so) the way a host process does (dlopen,
 * RTLD_NOW: every undefined symbol must resolve against the libexecutorch.so it was linked to) and
 * checks that it registers MobileMoEBackend in that runtime's registry, which was empty of it
 * before. Built for aarch64 by scripts/test_aarch64.sh and run under qemu; the runtime is the
 * executorch wheel's aarch64 libexecutorch.so. Exit 0 = pass; every failure prints why.
 *
 * ExecuTorch's registry API is C++: `executorch::runtime::get_backend_class(const char*)` returns
 * a pointer, so it is called through its mangled name (same ABI as a C function of that type). */
#include <dlfcn.h>
#include <stdio.h>

typedef void *(*get_backend_class_fn)(const char *);
typedef int (*int_fn)(void);

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <libexecutorch.so> <libmobilemoe_executorch.so>\n", argv[0]);
        return 2;
    }
    void *et = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    if (!et) {
        fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
        return 1;
    }
    get_backend_class_fn get = (get_backend_class_fn)dlsym(et, "_ZN10executorch7runtime17get_backend_classEPKc");
    if (!get) {
        fprintf(stderr, "executorch::runtime::get_backend_class not found: %s\n", dlerror());
        return 1;
    }
    if (get("MobileMoEBackend")) {
        fprintf(stderr, "MobileMoEBackend is registered before the plugin is loaded\n");
        return 1;
    }
    void *plugin = dlopen(argv[2], RTLD_NOW | RTLD_GLOBAL);
    if (!plugin) {
        fprintf(stderr, "dlopen %s: %s\n", argv[2], dlerror());
        return 1;
    }
    if (!get("MobileMoEBackend")) {
        fprintf(stderr, "loading the plugin did not register MobileMoEBackend\n");
        return 1;
    }
    int_fn reg = (int_fn)dlsym(plugin, "mobilemoe_register");
    int_fn version = (int_fn)dlsym(plugin, "mobilemoe_version");
    if (!reg || !version) {
        fprintf(stderr, "mobilemoe_register / mobilemoe_version not exported\n");
        return 1;
    }
    int rc = reg(); /* idempotent: a second registration must not abort the process */
    if (rc != 0) {
        fprintf(stderr, "mobilemoe_register() = %d\n", rc);
        return 1;
    }
    printf("MobileMoEBackend registered in %s by %s (blob format v%d)\n", argv[1], argv[2], version());
    return 0;
}

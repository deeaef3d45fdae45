/*
 * insn_marker: a tiny QEMU TCG plugin (user mode) that counts executed guest instructions and,
 * on every getppid() syscall of the guest (the marker the bench makes with
 * std::os::unix::process::parent_id()), prints "MARK <n>" with the running count to stderr.
 * The bench brackets each measured region with two markers; the difference is the region's count.
 *
 * Counting is inline, per translation block (count += n_insns when a block starts), so it is
 * exact for blocks that run to their end (everything but faults / early exits, none here).
 *
 * Build (header from Debian's qemu source, `apt-get source --download-only qemu`):
 *   cc -O2 -shared -fPIC -I<qemu-src>/include/qemu -o insn_marker.so insn_marker.c
 * Run:
 *   qemu-aarch64 -cpu max -plugin ./insn_marker.so ./bench
 */
#include <inttypes.h>
#include <stdio.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define NR_GETPPID_AARCH64 173

static uint64_t insn_count;

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    (void)id; (void)vcpu; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7;
    (void)a8;
    if (num == NR_GETPPID_AARCH64) {
        fprintf(stderr, "MARK %" PRIu64 "\n", insn_count);
        fflush(stderr);
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    (void)id; (void)p;
    fprintf(stderr, "TOTAL %" PRIu64 "\n", insn_count);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)info; (void)argc; (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}

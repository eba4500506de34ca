// SPDX-License-Identifier: MIT
/*
 * flashvmm: a tiny KVM VMM that replays the memslot churn of a firmware boot
 * on QEMU's pflash device.
 *
 * The guest (16-bit real mode) loops over a "flash program" sequence: it
 * writes a command to the flash region, which is mapped as a read-only
 * memslot, so the write exits to us and we delete the memslot (I/O mode).
 * The guest then reads the status register; with no memslot that read exits
 * too and we re-add the memslot (ROM mode) before answering "ready".  The
 * guest checks that the ROM content is visible again and goes on.  Every
 * cycle therefore makes two KVM_SET_USER_MEMORY_REGION calls: the delete
 * costs two expedited SRCU grace periods in a 6.1 host
 * (kvm_invalidate_memslot() and kvm_delete_memslot() each end in
 * synchronize_srcu_expedited(&kvm->srcu)), the create one.
 *
 * Extra vCPUs keep running guest code meanwhile (kvm->srcu readers), and a
 * number of static memslots can be held live to model a large guest.
 * Reader kinds (--spin-mode): loop (guest spins; KVM holds kvm->srcu only
 * while it handles the rare exits), io (a port write per iteration, each an
 * exit to us), cpuid (exits handled inside KVM), fault (the guest keeps
 * touching pages the VMM keeps discarding: each touch is a page fault that
 * KVM handles under kvm->srcu, allocating memory and taking mmap_lock, so
 * the read section can sleep), block (the same touches, but the pages are
 * registered with userfaultfd and served --block-us late, as a VMM serving
 * guest memory from far away would: the vCPU sleeps that long inside
 * kvm->srcu, the reader 282d8998e997 was written for).
 *
 * Accounting: each update's latency by kind (delete/create), a histogram,
 * the updates that took at least a jiffy, KVM's own per-vCPU exit counters
 * (binary stats fd), the CPU time of the VMM's threads and of the test
 * host's kworkers (where SRCU's grace-period work runs), matched by PID so a
 * kworker that comes or goes does not skew the sum, with their voluntary
 * (sleeps) and involuntary switches; the updater thread's own switches; the
 * exact window between the two /proc/stat reads, so that busy time can be
 * computed as window minus exact (nohz) idle instead of from tick samples.
 *
 * Replay (--pattern P): instead of the uniform cycle, the guest makes the
 * flash accesses of a recorded firmware boot (QEMU's pflash trace events, see
 * pipeline/workloads/firmware.py): P lists its phases, each "W" or "W/R"
 * (W writes and R status reads while the flash is in I/O mode) with an
 * optional "*N" repeat, comma-separated.  As QEMU's pflash does, the first
 * write of a phase takes the memslot away (ROMD off) and its last write (the
 * read-array command) puts it back; the writes and reads between exit to us
 * with no memslot change.  The VMM checks that the guest stays in step.
 *
 * Calibration (--control-duty F): no VM; one thread on --control-cpu runs
 * F of every jiffy right after a tick and sleeps on a tick-aligned timer the
 * rest, for --control-ms, and prints the same accounting plus the time it
 * spent busy by its own clock: a control with a known answer for whatever
 * estimator reads the accounting.  --control-jiffies N stretches the period
 * to N jiffies (F of it busy): with long periods there are few wake-ups, so
 * the busy time is the whole known answer, wake-up costs aside.
 *
 * Output: one JSON document on stdout.  Exit 0 on success, 1 on a usage or
 * KVM error, 2 if the guest reported a failure, 3 on watchdog timeout, 4 when
 * censored (--censor-ms: the boot ran that long unfinished; its JSON says so).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE        0x80000UL       /* 512 KiB of guest RAM at GPA 0 */
#define FLASH_GPA       0x80000UL       /* flash right above it */
#define FLASH_SIZE      0x10000UL       /* 64 KiB */
#define FLASH_BYTE      0xA5
#define STATIC_GPA      0x100000UL      /* static slots start at 1 MiB */
#define SLOT_RAM        0
#define SLOT_FLASH      1
#define SLOT_STATIC0    3
#define PORT_BOOTED     0xF1
#define PORT_FAILED     0xF2
#define PORT_SPIN       0xF3
#define FLASH_CODE_GPA  0x1000
#define SPIN_IO_GPA     0x2000
#define SPIN_LOOP_GPA   0x2010
#define SPIN_CPUID_GPA  0x2020
#define SPIN_FAULT_GPA  0x2030
#define SCRATCH_GPA     0x90000UL       /* pages the fault reader touches */
#define SCRATCH_SIZE    0x10000UL       /* 16 pages */
#define SLOT_SCRATCH    2
#define MAX_SPINNERS    16
#define MAX_CPUS        64
#define TIMELINE_POINTS 20
#define SLEEP_NS        2000000ULL      /* kept for older reports: updates over 2 ms */
#define DISCARD_US      1000            /* fault reader: pages discarded every 1 ms */
#define MAX_KWORKERS    1024
#define VMM_VERSION     3
#define TABLE_GPA       0x10000UL       /* replay: the phase table (es segment 0x1000) */
#define MAX_PHASES      16000

/* Histogram of update latencies, upper bin edges in microseconds: log bins
 * below a millisecond, then 1 ms bins up to 64 ms, then an overflow bin. */
static const unsigned int hist_edges_us[] = {
	10, 20, 50, 100, 200, 500, 1000,
	2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 11000, 12000, 13000, 14000, 15000, 16000,
	17000, 18000, 19000, 20000, 21000, 22000, 23000, 24000, 25000, 26000, 27000, 28000, 29000, 30000,
	31000, 32000, 33000, 34000, 35000, 36000, 37000, 38000, 39000, 40000, 41000, 42000, 43000, 44000,
	45000, 46000, 47000, 48000, 49000, 50000, 51000, 52000, 53000, 54000, 55000, 56000, 57000, 58000,
	59000, 60000, 61000, 62000, 63000, 64000,
};
#define HIST_BINS (sizeof(hist_edges_us) / sizeof(hist_edges_us[0]) + 1)

/* Replay: writes and reads of each phase (phase_w >= 1; phase_w >= 2 when phase_r > 0). */
static uint16_t phase_w[MAX_PHASES], phase_r[MAX_PHASES];

/* Hand-assembled real-mode code; see the comment block above each. */
static const uint8_t flash_code[] = {
	0xB8, 0x00, 0x80,               /* mov ax, 0x8000            */
	0x8E, 0xD8,                     /* mov ds, ax                */
	/* loop: */
	0xC6, 0x06, 0x00, 0x00, 0x40,   /* mov byte [0], 0x40  ; cmd */
	0xA0, 0x00, 0x00,               /* mov al, [0]     ; status  */
	0xA8, 0x80,                     /* test al, 0x80             */
	0x74, 0x12,                     /* jz fail                   */
	0x8A, 0x26, 0x02, 0x00,         /* mov ah, [2]     ; ROM     */
	0x80, 0xFC, FLASH_BYTE,         /* cmp ah, 0xA5              */
	0x75, 0x09,                     /* jne fail                  */
	0x66, 0x49,                     /* dec ecx                   */
	0x75, 0xE7,                     /* jnz loop                  */
	0xE6, PORT_BOOTED,              /* out 0xF1, al              */
	0xF4,                           /* hlt                       */
	0xEB, 0xFE,                     /* jmp $                     */
	/* fail: */
	0xE6, PORT_FAILED,              /* out 0xF2, al              */
	0xF4,                           /* hlt                       */
};
/* Replay guest: for each (writes, reads) word pair of the table at es:0: the
 * opening write, writes-2 more, the reads, the closing 0xFF (read array);
 * a pair with writes == 1 is one write; writes == 0 ends the table. */
static const uint8_t replay_code[] = {
	0xB8, 0x00, 0x80,               /*  0: mov ax, 0x8000          */
	0x8E, 0xD8,                     /*  3: mov ds, ax  ; flash     */
	0xB8, 0x00, 0x10,               /*  5: mov ax, 0x1000          */
	0x8E, 0xC0,                     /*  8: mov es, ax  ; table     */
	0x31, 0xF6,                     /* 10: xor si, si              */
	/* phase: */
	0x26, 0x8B, 0x0C,               /* 12: mov cx, es:[si]         */
	0x26, 0x8B, 0x54, 0x02,         /* 15: mov dx, es:[si+2]       */
	0x83, 0xC6, 0x04,               /* 19: add si, 4               */
	0xE3, 0x23,                     /* 22: jcxz done (59)          */
	0xC6, 0x06, 0x00, 0x00, 0x10,   /* 24: mov byte [0], 0x10      */
	0x49,                           /* 29: dec cx                  */
	0x74, 0xEC,                     /* 30: jz phase (12)           */
	0x49,                           /* 32: dec cx                  */
	0x74, 0x07,                     /* 33: jz reads (42)           */
	/* wloop: */
	0xC6, 0x06, 0x00, 0x00, 0x10,   /* 35: mov byte [0], 0x10      */
	0xE2, 0xF9,                     /* 40: loop wloop (35)         */
	/* reads: */
	0x85, 0xD2,                     /* 42: test dx, dx             */
	0x74, 0x06,                     /* 44: jz last (52)            */
	/* rloop: */
	0xA0, 0x00, 0x00,               /* 46: mov al, [0]             */
	0x4A,                           /* 49: dec dx                  */
	0x75, 0xFA,                     /* 50: jnz rloop (46)          */
	/* last: */
	0xC6, 0x06, 0x00, 0x00, 0xFF,   /* 52: mov byte [0], 0xFF      */
	0xEB, 0xD1,                     /* 57: jmp phase (12)          */
	/* done: */
	0xE6, PORT_BOOTED,              /* 59: out 0xF1, al            */
	0xF4,                           /* 61: hlt                     */
	0xEB, 0xFE,                     /* 62: jmp $                   */
};

/* "W[/R][*N],..." into phase_w/phase_r; the number of phases, or -1. */
static long parse_pattern(const char *p)
{
	long n = 0;

	while (*p) {
		char *end;
		long w = strtol(p, &end, 10), r = 0, times = 1;

		if (end == p || w < 1 || w > 60000)
			return -1;
		p = end;
		if (*p == '/') {
			r = strtol(p + 1, &end, 10);
			if (end == p + 1 || r < 0 || r > 60000)
				return -1;
			p = end;
		}
		if (*p == '*') {
			times = strtol(p + 1, &end, 10);
			if (end == p + 1 || times < 1 || times > MAX_PHASES)
				return -1;
			p = end;
		}
		if (r > 0 && w < 2)
			return -1;      /* reads need an opening and a closing write */
		for (long i = 0; i < times; i++) {
			if (n >= MAX_PHASES)
				return -1;
			phase_w[n] = (uint16_t)w;
			phase_r[n] = (uint16_t)r;
			n++;
		}
		if (*p == ',')
			p++;
		else if (*p)
			return -1;
	}
	return n;
}

static const uint8_t spin_io_code[] = {
	0xE6, PORT_SPIN,                /* out 0xF3, al */
	0xEB, 0xFC,                     /* jmp back     */
};
static const uint8_t spin_loop_code[] = { 0xEB, 0xFE };  /* jmp $ */
/* cpuid exits to the host kernel (not to us) every time: in-kernel exits keep
 * the vCPU thread inside kvm->srcu read-side sections most of the time. */
static const uint8_t spin_cpuid_code[] = {
	0x0F, 0xA2,                     /* cpuid        */
	0xEB, 0xFC,                     /* jmp back     */
};
/* Write one byte per 4 KiB page of the scratch slot, round and round: a page
 * the VMM has discarded faults into KVM again. */
static const uint8_t spin_fault_code[] = {
	0xB8, 0x00, 0x90,               /* mov ax, 0x9000     ; top:    */
	0x8E, 0xC0,                     /* mov es, ax         ; next:   */
	0x26, 0xC6, 0x06, 0x00, 0x00, 0x01, /* mov byte [es:0], 1       */
	0x05, 0x00, 0x01,               /* add ax, 0x100      ; +4 KiB  */
	0x3D, 0x00, 0xA0,               /* cmp ax, 0xA000               */
	0x72, 0xF0,                     /* jb next                      */
	0xEB, 0xEB,                     /* jmp top                      */
};

struct options {
	long cycles;
	long static_slots;
	int spinners;
	int spin_mode;          /* SPIN_IO, SPIN_LOOP or SPIN_CPUID */
	int flash_cpu;          /* -1: not pinned */
	int spinner_cpu;        /* -1: not pinned */
	int timeout_s;
	long censor_ms;         /* > 0: stop after this long and report the boot as "at least" that */
	long block_us;          /* block reader: how late each fault is served */
	long block_gap_us;      /* block reader: how long a served page stays mapped */
	double control_duty;    /* > 0: run the calibration control instead */
	long control_ms;
	int control_cpu;
	int control_jiffies;    /* the control's period, in jiffies (1: every tick) */
	long phases;            /* > 0: replaying --pattern (then cycles = phases) */
};


enum { SPIN_IO, SPIN_LOOP, SPIN_CPUID, SPIN_FAULT, SPIN_BLOCK, SPIN_MODES };
static const char *spin_names[] = { "io", "loop", "cpuid", "fault", "block" };
static const unsigned long spin_entry[] = { SPIN_IO_GPA, SPIN_LOOP_GPA, SPIN_CPUID_GPA, SPIN_FAULT_GPA,
					    SPIN_FAULT_GPA };

struct cpu_times { unsigned long long v[8]; };  /* user nice system idle iowait irq softirq steal */

struct spinner {
	pthread_t thread;
	int fd;
	struct kvm_run *run;
	int cpu_wanted;
	volatile int cpu_seen;
	volatile unsigned long long exits;
	volatile int error;
	unsigned long long cpu_ns;      /* this vCPU thread's CPU time */
	long long kvm_exits;            /* KVM's own exit counter for this vCPU (-1: unknown) */
};

static int kvm_fd, vm_fd;
static size_t run_size;
static volatile int stop_spinners;
static volatile long progress_updates;
/* Per kind (0 delete, 1 create): updates done and their summed time, for a censored report. */
static volatile unsigned long long progress_kind_n[2], progress_kind_ns[2];
static unsigned long long program_start_ns;
static uint8_t *scratch;
static volatile unsigned long long discards;
static volatile int stop_server;
static int uffd = -1;
static long block_us, block_gap_us;
static volatile unsigned long long blocks, blocked_ns;

struct kworker { int pid; unsigned long long ticks; long nvcsw, nivcsw; };
struct kworker_delta { unsigned long long ticks; long nvcsw, nivcsw; int threads; };

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("{\"status\": \"error\", \"error\": \"");
	vprintf(fmt, ap);
	printf(": %s\"}\n", strerror(errno));
	va_end(ap);
	fflush(stdout);
	exit(1);
}

static unsigned long long thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static unsigned long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static int read_proc_stat(struct cpu_times *t, int max)
{
	char line[512];
	int n = 0;
	FILE *f = fopen("/proc/stat", "r");

	if (!f)
		die("open /proc/stat");
	/* t[0] is the aggregate line, t[1..] the CPUs in order. */
	while (fgets(line, sizeof(line), f) && n < max) {
		if (strncmp(line, "cpu", 3))
			break;
		char *p = strchr(line, ' ');
		memset(&t[n], 0, sizeof(t[n]));
		sscanf(p, "%llu %llu %llu %llu %llu %llu %llu %llu",
		       &t[n].v[0], &t[n].v[1], &t[n].v[2], &t[n].v[3],
		       &t[n].v[4], &t[n].v[5], &t[n].v[6], &t[n].v[7]);
		n++;
	}
	fclose(f);
	return n;
}

static void pin_to(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity(%d)", cpu);
}

static void set_slot(int slot, unsigned long gpa, unsigned long size, void *hva, int flags)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot, .flags = flags, .guest_phys_addr = gpa,
		.memory_size = size, .userspace_addr = (unsigned long)hva,
	};

	if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &r))
		die("KVM_SET_USER_MEMORY_REGION slot %d size %lu", slot, size);
}

static int create_vcpu(int id, unsigned long rip, unsigned long rcx, struct kvm_run **run)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	int fd = ioctl(vm_fd, KVM_CREATE_VCPU, id);

	if (fd < 0)
		die("KVM_CREATE_VCPU %d", id);
	*run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (*run == MAP_FAILED)
		die("mmap kvm_run");
	if (ioctl(fd, KVM_GET_SREGS, &sregs))
		die("KVM_GET_SREGS");
	/* Flat real mode: every segment at base 0. */
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ds = sregs.es = sregs.ss = sregs.fs = sregs.gs = sregs.cs;
	sregs.ds.type = sregs.es.type = sregs.ss.type = 3;
	sregs.fs.type = sregs.gs.type = 3;
	if (ioctl(fd, KVM_SET_SREGS, &sregs))
		die("KVM_SET_SREGS");
	memset(&regs, 0, sizeof(regs));
	regs.rip = rip;
	regs.rcx = rcx;
	regs.rsp = 0x7000;
	regs.rflags = 2;
	if (ioctl(fd, KVM_SET_REGS, &regs))
		die("KVM_SET_REGS");
	return fd;
}

static void kick(int sig)
{
	(void)sig;
}

static void *spinner_main(void *arg)
{
	struct spinner *s = arg;

	pin_to(s->cpu_wanted);
	s->cpu_seen = sched_getcpu();
	while (!stop_spinners) {
		if (ioctl(s->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR)
				continue;
			s->error = errno;
			break;
		}
		if (s->run->exit_reason == KVM_EXIT_IO && s->run->io.port == PORT_SPIN) {
			s->exits++;
			continue;
		}
		if (s->run->exit_reason == KVM_EXIT_INTR)
			continue;
		s->error = 1000 + s->run->exit_reason;
		break;
	}
	s->cpu_seen = sched_getcpu();
	s->cpu_ns = thread_cpu_ns();
	return NULL;
}

static void *watchdog_main(void *arg)
{
	const struct options *o = arg;

	if (o->censor_ms > 0 && o->censor_ms < o->timeout_s * 1000L) {
		/* Censored: the boot took at least this long, which is all the comparison needs. */
		struct timespec ts = { .tv_sec = o->censor_ms / 1000, .tv_nsec = (o->censor_ms % 1000) * 1000000L };
		unsigned long long at;

		nanosleep(&ts, NULL);
		at = now_ns() - program_start_ns;
		/* The updates made so far keep their cost per grace period: a rate, not a lower bound. */
		printf("{\"status\": \"censored\", \"tool\": \"flashvmm\", \"censored_ns\": %llu, "
		       "\"censor_ms\": %ld, \"updates_done\": %ld, \"cycles\": %ld, "
		       "\"gp_per_delete\": 2, \"gp_per_create\": 1, "
		       "\"done_delete\": {\"n\": %llu, \"sum\": %llu}, \"done_create\": {\"n\": %llu, \"sum\": %llu}}\n",
		       at, o->censor_ms, progress_updates, o->cycles, progress_kind_n[0], progress_kind_ns[0],
		       progress_kind_n[1], progress_kind_ns[1]);
		fflush(stdout);
		_exit(4);
	}
	sleep(o->timeout_s);
	printf("{\"status\": \"timeout\", \"timeout_s\": %d, \"updates_done\": %ld}\n",
	       o->timeout_s, progress_updates);
	fflush(stdout);
	_exit(3);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;

	return x < y ? -1 : x > y;
}

/* KVM's binary statistics (KVM_GET_STATS_FD, Linux 5.14+): the value of the
 * named per-vCPU counter, or -1 if the kernel does not offer it. */
static long long vcpu_stat(int vcpu_fd, const char *name)
{
	struct kvm_stats_header hdr;
	long long value = -1;
	int fd = ioctl(vcpu_fd, KVM_GET_STATS_FD, NULL);

	if (fd < 0)
		return -1;
	if (pread(fd, &hdr, sizeof(hdr), 0) != sizeof(hdr)) {
		close(fd);
		return -1;
	}
	size_t dsize = sizeof(struct kvm_stats_desc) + hdr.name_size;
	char *descs = calloc(hdr.num_desc, dsize);

	if (descs && pread(fd, descs, dsize * hdr.num_desc, hdr.desc_offset) == (ssize_t)(dsize * hdr.num_desc)) {
		for (unsigned int i = 0; i < hdr.num_desc; i++) {
			struct kvm_stats_desc *d = (struct kvm_stats_desc *)(descs + i * dsize);
			uint64_t v;

			if (strncmp(d->name, name, hdr.name_size))
				continue;
			if (pread(fd, &v, sizeof(v), hdr.data_offset + d->offset) == sizeof(v))
				value = (long long)v;
			break;
		}
	}
	free(descs);
	close(fd);
	return value;
}

/* The test host's kworker threads, where SRCU's grace-period work
 * (process_srcu) and callback invocation run: CPU time in clock ticks (utime
 * and stime in /proc/PID/stat add up to the scheduler's exact runtime) and
 * voluntary (a sleep) and involuntary (a preemption) switches. */
static int kworker_scan(struct kworker *kw, int max)
{
	struct dirent *de;
	DIR *dir = opendir("/proc");
	int n = 0;

	if (!dir)
		return 0;
	while ((de = readdir(dir)) && n < max) {
		char path[300], buf[512];
		unsigned long long ut = 0, st = 0;
		int is_kworker = 0;
		FILE *f;

		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(buf, sizeof(buf), f)) {
			char *open_paren = strchr(buf, '('), *close_paren = strrchr(buf, ')');

			is_kworker = open_paren && close_paren && !strncmp(open_paren + 1, "kworker", 7) &&
				sscanf(close_paren + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
				       &ut, &st) == 2;
		}
		fclose(f);
		if (!is_kworker)
			continue;
		kw[n].pid = atoi(de->d_name);
		kw[n].ticks = ut + st;
		kw[n].nvcsw = kw[n].nivcsw = 0;
		snprintf(path, sizeof(path), "/proc/%s/status", de->d_name);
		f = fopen(path, "r");
		if (f) {
			while (fgets(buf, sizeof(buf), f)) {
				sscanf(buf, "voluntary_ctxt_switches: %ld", &kw[n].nvcsw);
				sscanf(buf, "nonvoluntary_ctxt_switches: %ld", &kw[n].nivcsw);
			}
			fclose(f);
		}
		n++;
	}
	closedir(dir);
	return n;
}

/* What the kworkers did between two scans, thread by thread: a kworker
 * that appeared counts from zero, one that went away is lost (its time
 * since the first scan is not knowable from /proc). */
static void kworker_delta(const struct kworker *a, int na, const struct kworker *b, int nb,
			  struct kworker_delta *d)
{
	memset(d, 0, sizeof(*d));
	d->threads = nb;
	for (int i = 0; i < nb; i++) {
		unsigned long long t0 = 0;
		long v0 = 0, iv0 = 0;

		for (int j = 0; j < na; j++)
			if (a[j].pid == b[i].pid) {
				t0 = a[j].ticks;
				v0 = a[j].nvcsw;
				iv0 = a[j].nivcsw;
				break;
			}
		if (b[i].ticks >= t0)
			d->ticks += b[i].ticks - t0;
		if (b[i].nvcsw >= v0)
			d->nvcsw += b[i].nvcsw - v0;
		if (b[i].nivcsw >= iv0)
			d->nivcsw += b[i].nivcsw - iv0;
	}
}

static void sleep_us(long us)
{
	struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* The block reader's VMM side: every fault on the scratch pages is served
 * block_us late (the vCPU sleeps in the fault, inside its kvm->srcu read
 * section, meanwhile); the page then stays mapped block_gap_us and is
 * discarded, so the reader's next touch of it blocks again.  After the
 * readers are told to stop it serves without delay until they are joined. */
static void *serve_main(void *arg)
{
	static uint8_t zero_page[4096] __attribute__((aligned(4096)));

	(void)arg;
	while (!stop_server) {
		struct pollfd pfd = { .fd = uffd, .events = POLLIN };
		struct uffd_msg msg;
		unsigned long long t0;

		if (poll(&pfd, 1, 20) <= 0)
			continue;
		if (read(uffd, &msg, sizeof(msg)) != sizeof(msg) || msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		t0 = now_ns();
		if (!stop_spinners)
			sleep_us(block_us);
		unsigned long page = msg.arg.pagefault.address & ~4095UL;
		struct uffdio_copy copy = { .dst = page, .src = (unsigned long)zero_page, .len = 4096 };

		if (ioctl(uffd, UFFDIO_COPY, &copy) && errno != EEXIST)
			continue;
		blocked_ns += now_ns() - t0;
		blocks++;
		if (stop_spinners)
			continue;
		sleep_us(block_gap_us);
		if (madvise((void *)page, 4096, MADV_DONTNEED))
			die("madvise(MADV_DONTNEED) (the block reader needs CONFIG_ADVISE_SYSCALLS=y in the test host)");
		discards++;
	}
	return NULL;
}

static void setup_block_reader(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = {
		.range = { .start = (unsigned long)scratch, .len = SCRATCH_SIZE },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	uffd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0)
		die("userfaultfd (the block reader needs CONFIG_USERFAULTFD=y in the test host)");
	if (ioctl(uffd, UFFDIO_API, &api))
		die("UFFDIO_API");
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER");
}

/* The fault reader's partner: keep discarding the scratch pages, so that the
 * reader's next touch of each one is a fresh page fault in KVM. */
static void *discard_main(void *arg)
{
	(void)arg;
	while (!stop_spinners) {
		if (madvise(scratch, SCRATCH_SIZE, MADV_DONTNEED))
			die("madvise(MADV_DONTNEED) (the fault reader needs CONFIG_ADVISE_SYSCALLS=y in the test host)");
		discards++;
		usleep(DISCARD_US);
	}
	return NULL;
}

struct lat_stats { unsigned long long n, sum, p50, p90, p99, max, min, over_jiffy; };

static void lat_summary(unsigned long long *v, long n, unsigned long long jiffy_ns, struct lat_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->n = n;
	for (long i = 0; i < n; i++) {
		st->sum += v[i];
		st->over_jiffy += v[i] >= jiffy_ns;
	}
	if (!n)
		return;
	qsort(v, n, sizeof(*v), cmp_u64);
	st->p50 = v[(long)(0.50 * (n - 1))];
	st->p90 = v[(long)(0.90 * (n - 1))];
	st->p99 = v[(long)(0.99 * (n - 1))];
	st->max = v[n - 1];
	st->min = v[0];
}

static void print_lat(const char *name, const struct lat_stats *st)
{
	printf("  \"%s\": {\"n\": %llu, \"sum\": %llu, \"p50\": %llu, \"p90\": %llu, \"p99\": %llu, "
	       "\"max\": %llu, \"min\": %llu, \"over_jiffy\": %llu},\n", name, st->n, st->sum, st->p50,
	       st->p90, st->p99, st->max, st->min, st->over_jiffy);
}

static void print_cpu_times(const char *name, struct cpu_times *a, struct cpu_times *b, int n)
{
	static const char *field[] = { "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal" };

	printf("  \"%s\": [", name);
	for (int i = 0; i < n; i++) {
		if (i)
			printf(", {\"cpu\": \"cpu%d\"", i - 1);
		else
			printf("{\"cpu\": \"all\"");
		for (int f = 0; f < 8; f++)
			printf(", \"%s\": %llu", field[f], b[i].v[f] - a[i].v[f]);
		printf("}");
	}
	printf("],\n");
}

/* The calibration control: a thread of known duty cycle that wakes on a
 * tick-aligned timer (the coarse clock reads the time of the last tick) a
 * little after each tick, spins `duty` of a jiffy by its own clock, and
 * sleeps again before the next tick, as SRCU's 1-jiffy timers do: work a
 * tick-sampling estimator never sees. */
static int run_control(const struct options *o)
{
	struct cpu_times s0[MAX_CPUS + 1], s1[MAX_CPUS + 1];
	struct timespec ts;
	unsigned long long jiffy_ns, base, offset, busy_len, end, k, busy_ns = 0, periods = 0;
	unsigned long long w0, w1, thread0, thread_ns;
	int n;

	pin_to(o->control_cpu);
	clock_getres(CLOCK_MONOTONIC_COARSE, &ts);
	jiffy_ns = (unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
	offset = jiffy_ns / 16;
	busy_len = (unsigned long long)(o->control_duty * jiffy_ns * o->control_jiffies);
	w0 = now_ns();
	n = read_proc_stat(s0, MAX_CPUS + 1);
	thread0 = thread_cpu_ns();
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	base = (unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
	end = now_ns() + (unsigned long long)o->control_ms * 1000000ULL;
	k = (now_ns() - base) / jiffy_ns + 1;
	for (;;) {
		unsigned long long deadline = base + k * jiffy_ns + offset, t0, t1;
		struct timespec dl = { .tv_sec = deadline / 1000000000ULL, .tv_nsec = deadline % 1000000000ULL };

		if (deadline + busy_len > end)
			break;
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl, NULL) == EINTR)
			;
		t0 = now_ns();
		do
			t1 = now_ns();
		while (t1 - t0 < busy_len);
		busy_ns += t1 - t0;
		periods++;
		k += o->control_jiffies;
		if (base + k * jiffy_ns + offset <= t1)
			k = (t1 - base) / jiffy_ns + 1;
	}
	thread_ns = thread_cpu_ns() - thread0;
	read_proc_stat(s1, MAX_CPUS + 1);
	w1 = now_ns();
	printf("{\n  \"status\": \"ok\",\n  \"tool\": \"flashvmm\", \"version\": %d, \"mode\": \"control\",\n",
	       VMM_VERSION);
	printf("  \"params\": {\"duty\": %.4f, \"control_ms\": %ld, \"control_cpu\": %d, \"control_jiffies\": %d},\n",
	       o->control_duty, o->control_ms, o->control_cpu, o->control_jiffies);
	printf("  \"jiffy_ns\": %llu,\n  \"stat_window_ns\": %llu,\n  \"busy_ns\": %llu,\n"
	       "  \"periods\": %llu,\n  \"thread_cpu_ns\": %llu,\n  \"cpu_seen\": %d,\n",
	       jiffy_ns, w1 - w0, busy_ns, periods, thread_ns, sched_getcpu());
	printf("  \"clk_tck\": %ld,\n", sysconf(_SC_CLK_TCK));
	print_cpu_times("proc_stat_delta", s0, s1, n);
	printf("  \"end\": true\n}\n");
	fflush(stdout);
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: flashvmm [--cycles N] [--static-slots N] [--spinners N]\n"
		"                [--spin-mode io|loop|cpuid|fault|block] [--flash-cpu C] [--spinner-cpu C]\n"
		"                [--block-us US] [--block-gap-us US] [--timeout SECONDS] [--censor-ms MS]\n"
		"                [--pattern W[/R][*N],...]\n"
		"       flashvmm --control-duty F [--control-ms MS] [--control-cpu C] [--control-jiffies N]\n");
	exit(1);
}

static void parse_args(int argc, char **argv, struct options *o)
{
	o->cycles = 6000;
	o->static_slots = 0;
	o->spinners = 1;
	o->spin_mode = SPIN_IO;
	o->flash_cpu = -1;
	o->spinner_cpu = -1;
	o->timeout_s = 600;
	o->censor_ms = 0;
	o->block_us = 2000;
	o->block_gap_us = 1000;
	o->control_duty = 0;
	o->control_ms = 4000;
	o->control_cpu = 1;
	o->control_jiffies = 1;
	o->phases = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!v)
			usage();
		if (!strcmp(a, "--cycles"))
			o->cycles = atol(v);
		else if (!strcmp(a, "--static-slots"))
			o->static_slots = atol(v);
		else if (!strcmp(a, "--spinners"))
			o->spinners = atoi(v);
		else if (!strcmp(a, "--spin-mode")) {
			o->spin_mode = -1;
			for (int m = 0; m < SPIN_MODES; m++)
				if (!strcmp(v, spin_names[m]))
					o->spin_mode = m;
			if (o->spin_mode < 0)
				usage();
		}
		else if (!strcmp(a, "--flash-cpu"))
			o->flash_cpu = atoi(v);
		else if (!strcmp(a, "--spinner-cpu"))
			o->spinner_cpu = atoi(v);
		else if (!strcmp(a, "--timeout"))
			o->timeout_s = atoi(v);
		else if (!strcmp(a, "--censor-ms"))
			o->censor_ms = atol(v);
		else if (!strcmp(a, "--block-us"))
			o->block_us = atol(v);
		else if (!strcmp(a, "--block-gap-us"))
			o->block_gap_us = atol(v);
		else if (!strcmp(a, "--control-duty"))
			o->control_duty = atof(v);
		else if (!strcmp(a, "--control-ms"))
			o->control_ms = atol(v);
		else if (!strcmp(a, "--control-cpu"))
			o->control_cpu = atoi(v);
		else if (!strcmp(a, "--control-jiffies"))
			o->control_jiffies = atoi(v);
		else if (!strcmp(a, "--pattern")) {
			o->phases = parse_pattern(v);
			if (o->phases < 1)
				usage();
		}
		else
			usage();
		i++;
	}
	if (o->cycles < 1 || o->static_slots < 0 || o->spinners < 0 ||
	    o->spinners > MAX_SPINNERS || o->timeout_s < 1 || o->censor_ms < 0 || o->block_us < 0 || o->block_us > 1000000 ||
	    o->block_gap_us < 0 || o->block_gap_us > 1000000 || o->control_duty < 0 || o->control_duty > 0.9 ||
	    o->control_ms < 1 || o->control_ms > 600000 || o->control_jiffies < 1 || o->control_jiffies > 1000)
		usage();
	if (o->phases > 0)
		o->cycles = o->phases;
}

int main(int argc, char **argv)
{
	unsigned long long t_start = now_ns(), t_setup_done, t_end;
	unsigned long long timeline[TIMELINE_POINTS];
	struct cpu_times stat0[MAX_CPUS + 1], stat1[MAX_CPUS + 1];
	struct spinner spinners[MAX_SPINNERS];
	struct options o;
	struct kvm_run *run;
	struct rusage ru;
	pthread_t watchdog;
	long updates = 0, mmio_writes = 0, mmio_reads = 0, other_exits = 0;
	long rp = 0, rk = 0;    /* replay: the phase, and the accesses made in it so far */
	int romd = 1;           /* the flash is mapped (ROM mode) */
	char failure[256] = "";
	long nslots_cap;
	unsigned long long flash_thread_ns;
	int ncpu_lines, flash_fd, guest_status = 0, flash_cpu_seen;
	uint8_t *ram, *flash, *static_page;
	unsigned long long *lat, *lat_kind[2];
	long n_kind[2] = { 0, 0 };
	unsigned long long hist[2][HIST_BINS];
	static struct kworker kw0[MAX_KWORKERS], kw1[MAX_KWORKERS];
	struct kworker_delta kwd;
	int nkw0, nkw1;
	unsigned long long stat_t0, stat_t1;
	struct rusage flash_ru;
	pthread_t discarder, server;
	struct timespec tick;
	unsigned long long jiffy_ns;
	long long flash_kvm_exits;

	parse_args(argc, argv, &o);
	if (o.control_duty > 0)
		return run_control(&o);
	block_us = o.block_us;
	block_gap_us = o.block_gap_us;
	signal(SIGUSR1, kick);
	{
		struct sigaction sa = { .sa_handler = kick };
		sigaction(SIGUSR1, &sa, NULL);  /* no SA_RESTART: KVM_RUN returns EINTR */
	}
	program_start_ns = t_start;
	pthread_create(&watchdog, NULL, watchdog_main, &o);
	pin_to(o.flash_cpu);
	nkw0 = kworker_scan(kw0, MAX_KWORKERS);
	stat_t0 = now_ns();
	ncpu_lines = read_proc_stat(stat0, MAX_CPUS + 1);
	/* The coarse clock ticks once a jiffy: its resolution is 1/HZ. */
	clock_getres(CLOCK_MONOTONIC_COARSE, &tick);
	jiffy_ns = (unsigned long long)tick.tv_sec * 1000000000ULL + tick.tv_nsec;
	memset(hist, 0, sizeof(hist));

	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		die("open /dev/kvm");
	if (ioctl(kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		die("unexpected KVM API version");
	if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) <= 0) {
		errno = ENOTSUP;
		die("KVM_CAP_READONLY_MEM not supported");
	}
	nslots_cap = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
	if (nslots_cap > 0 && o.static_slots + SLOT_STATIC0 > nslots_cap) {
		errno = ERANGE;
		die("--static-slots %ld exceeds KVM_CAP_NR_MEMSLOTS %ld", o.static_slots, nslots_cap);
	}
	vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm_fd < 0)
		die("KVM_CREATE_VM");
	run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);

	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	flash = mmap(NULL, FLASH_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	static_page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	scratch = mmap(NULL, SCRATCH_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	lat = calloc(2 * o.cycles, sizeof(*lat));
	lat_kind[0] = calloc(o.cycles, sizeof(*lat));
	lat_kind[1] = calloc(o.cycles, sizeof(*lat));
	if (ram == MAP_FAILED || flash == MAP_FAILED || static_page == MAP_FAILED || scratch == MAP_FAILED ||
	    !lat || !lat_kind[0] || !lat_kind[1])
		die("allocating guest memory");
	if (o.phases > 0) {
		uint16_t *table = (uint16_t *)(ram + TABLE_GPA);

		memcpy(ram + FLASH_CODE_GPA, replay_code, sizeof(replay_code));
		for (long i = 0; i < o.phases; i++) {
			table[2 * i] = phase_w[i];
			table[2 * i + 1] = phase_r[i];
		}
		table[2 * o.phases] = 0;
	} else {
		memcpy(ram + FLASH_CODE_GPA, flash_code, sizeof(flash_code));
	}
	memcpy(ram + SPIN_IO_GPA, spin_io_code, sizeof(spin_io_code));
	memcpy(ram + SPIN_LOOP_GPA, spin_loop_code, sizeof(spin_loop_code));
	memcpy(ram + SPIN_CPUID_GPA, spin_cpuid_code, sizeof(spin_cpuid_code));
	memcpy(ram + SPIN_FAULT_GPA, spin_fault_code, sizeof(spin_fault_code));
	memset(flash, FLASH_BYTE, FLASH_SIZE);
	set_slot(SLOT_RAM, 0, RAM_SIZE, ram, 0);
	set_slot(SLOT_FLASH, FLASH_GPA, FLASH_SIZE, flash, KVM_MEM_READONLY);
	if (o.spin_mode == SPIN_BLOCK && o.spinners)
		setup_block_reader();
	if ((o.spin_mode == SPIN_FAULT || o.spin_mode == SPIN_BLOCK) && o.spinners)
		set_slot(SLOT_SCRATCH, SCRATCH_GPA, SCRATCH_SIZE, scratch, 0);
	/* All static slots share one host page: KVM allows aliased HVAs. */
	for (long i = 0; i < o.static_slots; i++)
		set_slot(SLOT_STATIC0 + i, STATIC_GPA + i * 4096, 4096, static_page, 0);

	flash_fd = create_vcpu(0, FLASH_CODE_GPA, o.cycles, &run);
	for (int i = 0; i < o.spinners; i++) {
		struct spinner *s = &spinners[i];

		memset(s, 0, sizeof(*s));
		s->fd = create_vcpu(1 + i, spin_entry[o.spin_mode], 0, &s->run);
		s->cpu_wanted = o.spinner_cpu;
		s->cpu_seen = -1;
	}
	t_setup_done = now_ns();
	for (int i = 0; i < o.spinners; i++)
		pthread_create(&spinners[i].thread, NULL, spinner_main, &spinners[i]);
	if (o.spin_mode == SPIN_FAULT && o.spinners)
		pthread_create(&discarder, NULL, discard_main, NULL);
	if (o.spin_mode == SPIN_BLOCK && o.spinners)
		pthread_create(&server, NULL, serve_main, NULL);

	for (int p = 0; p < TIMELINE_POINTS; p++)
		timeline[p] = 0;
	while (!guest_status) {
		if (ioctl(flash_fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR)
				continue;
			die("KVM_RUN (flash vCPU)");
		}
		switch (run->exit_reason) {
		case KVM_EXIT_MMIO: {
			int is_write = run->mmio.is_write;

			if (run->mmio.phys_addr < FLASH_GPA || run->mmio.phys_addr >= FLASH_GPA + FLASH_SIZE) {
				snprintf(failure, sizeof(failure), "MMIO %s at 0x%llx outside the flash",
					 is_write ? "write" : "read", (unsigned long long)run->mmio.phys_addr);
				other_exits++;
				guest_status = 2;
				break;
			}
			int acts[2], nact = 0;

			if (o.phases > 0) {
				long want_w = phase_w[rp < o.phases ? rp : 0], want_r = phase_r[rp < o.phases ? rp : 0];
				int expect_write = rk < want_w - 1 || rk == want_w + want_r - 1;

				if (rp >= o.phases || is_write != expect_write) {
					snprintf(failure, sizeof(failure), "guest out of step with the recording: a %s at "
						 "phase %ld, access %ld", is_write ? "write" : "read", rp, rk);
					guest_status = 2;
					break;
				}
				if (is_write && romd) {
					acts[nact++] = 0;       /* the phase's first write: ROMD off */
					romd = 0;
				}
				if (++rk == want_w + want_r) {
					acts[nact++] = 1;       /* read array: ROMD on */
					romd = 1;
					rp++;
					rk = 0;
				}
			} else {
				if (updates >= 2 * o.cycles) {
					snprintf(failure, sizeof(failure), "more flash accesses than cycles");
					guest_status = 2;
					break;
				}
				acts[nact++] = is_write ? 0 : 1;
			}
			if (is_write) {
				mmio_writes++;
			} else {
				memset(run->mmio.data, 0, sizeof(run->mmio.data));
				run->mmio.data[0] = 0x80;       /* status: ready */
				mmio_reads++;
			}
			for (int a = 0; a < nact; a++) {
				int kind = acts[a];     /* 0: delete, 1: create */
				unsigned long long t0 = now_ns(), t1, us;
				unsigned int b = 0;

				set_slot(SLOT_FLASH, FLASH_GPA, kind ? FLASH_SIZE : 0, flash, KVM_MEM_READONLY);
				t1 = now_ns();
				us = (t1 - t0) / 1000;
				while (b < HIST_BINS - 1 && us >= hist_edges_us[b])
					b++;
				hist[kind][b]++;
				lat_kind[kind][n_kind[kind]++] = t1 - t0;
				lat[updates++] = t1 - t0;
				progress_kind_ns[kind] += t1 - t0;
				progress_kind_n[kind]++;
				progress_updates = updates;
				if (updates % ((2 * o.cycles + TIMELINE_POINTS - 1) / TIMELINE_POINTS) == 0 ||
				    updates == 2 * o.cycles) {
					int pt = (int)((updates * TIMELINE_POINTS - 1) / (2 * o.cycles));

					timeline[pt] = t1 - t_setup_done;
				}
			}
			break;
		}
		case KVM_EXIT_IO:
			if (run->io.port == PORT_BOOTED && o.phases > 0 && rp != o.phases) {
				snprintf(failure, sizeof(failure), "guest finished after %ld of %ld phases", rp, o.phases);
				guest_status = 2;
			} else if (run->io.port == PORT_BOOTED)
				guest_status = 1;
			else if (run->io.port == PORT_FAILED) {
				snprintf(failure, sizeof(failure), "guest check failed after %ld updates", updates);
				guest_status = 2;
			} else {
				other_exits++;
			}
			break;
		case KVM_EXIT_INTR:
			break;
		default: {
			struct kvm_regs regs;

			ioctl(flash_fd, KVM_GET_REGS, &regs);
			snprintf(failure, sizeof(failure), "unexpected exit reason %u (suberror %u) at rip 0x%llx",
				 run->exit_reason, run->exit_reason == KVM_EXIT_INTERNAL_ERROR ?
				 run->internal.suberror : 0, (unsigned long long)regs.rip);
			other_exits++;
			guest_status = 2;
		}
			break;
		}
	}
	t_end = now_ns();
	flash_cpu_seen = sched_getcpu();
	flash_thread_ns = thread_cpu_ns();
	getrusage(RUSAGE_THREAD, &flash_ru);
	stop_spinners = 1;
	for (int i = 0; i < o.spinners; i++) {
		spinners[i].run->immediate_exit = 1;
		pthread_kill(spinners[i].thread, SIGUSR1);
		pthread_join(spinners[i].thread, NULL);
		spinners[i].kvm_exits = vcpu_stat(spinners[i].fd, "exits");
	}
	if (o.spin_mode == SPIN_FAULT && o.spinners)
		pthread_join(discarder, NULL);
	if (o.spin_mode == SPIN_BLOCK && o.spinners) {
		stop_server = 1;
		pthread_join(server, NULL);
	}
	flash_kvm_exits = vcpu_stat(flash_fd, "exits");
	read_proc_stat(stat1, MAX_CPUS + 1);
	stat_t1 = now_ns();
	nkw1 = kworker_scan(kw1, MAX_KWORKERS);
	kworker_delta(kw0, nkw0, kw1, nkw1, &kwd);
	getrusage(RUSAGE_SELF, &ru);

	unsigned long long sum = 0, slept = 0;
	for (long i = 0; i < updates; i++) {
		sum += lat[i];
		slept += lat[i] > SLEEP_NS;
	}
	qsort(lat, updates, sizeof(*lat), cmp_u64);
#define PCT(q) (updates ? lat[(long)((q) * (updates - 1))] : 0)

	printf("{\n  \"status\": \"%s\",\n", guest_status == 1 ? "ok" : "guest-failed");
	printf("  \"tool\": \"flashvmm\", \"version\": %d,\n  \"failure\": \"%s\",\n", VMM_VERSION, failure);
	printf("  \"params\": {\"cycles\": %ld, \"static_slots\": %ld, \"spinners\": %d, "
	       "\"spin_mode\": \"%s\", \"flash_cpu\": %d, \"spinner_cpu\": %d, \"block_us\": %ld, "
	       "\"block_gap_us\": %ld, \"phases\": %ld},\n", o.cycles, o.static_slots, o.spinners,
	       spin_names[o.spin_mode], o.flash_cpu, o.spinner_cpu, o.block_us, o.block_gap_us, o.phases);
	printf("  \"boot_ns\": %llu,\n  \"setup_ns\": %llu,\n  \"flash_ns\": %llu,\n",
	       t_end - t_start, t_setup_done - t_start, t_end - t_setup_done);
	printf("  \"updates\": %ld,\n  \"mmio_write_exits\": %ld,\n  \"mmio_read_exits\": %ld,\n"
	       "  \"other_exits\": %ld,\n", updates, mmio_writes, mmio_reads, other_exits);
	printf("  \"update_ns\": {\"sum\": %llu, \"p50\": %llu, \"p90\": %llu, \"p99\": %llu, "
	       "\"max\": %llu, \"min\": %llu, \"over_2ms\": %llu},\n",
	       sum, PCT(0.50), PCT(0.90), PCT(0.99), updates ? lat[updates - 1] : 0,
	       updates ? lat[0] : 0, slept);
	{
		struct lat_stats st;

		printf("  \"jiffy_ns\": %llu,\n  \"gp_per_delete\": 2,\n  \"gp_per_create\": 1,\n", jiffy_ns);
		lat_summary(lat_kind[0], n_kind[0], jiffy_ns, &st);
		print_lat("update_delete_ns", &st);
		lat_summary(lat_kind[1], n_kind[1], jiffy_ns, &st);
		print_lat("update_create_ns", &st);
		printf("  \"hist_edges_us\": [");
		for (unsigned int b = 0; b < HIST_BINS - 1; b++)
			printf("%s%u", b ? ", " : "", hist_edges_us[b]);
		for (int k = 0; k < 2; k++) {
			printf("],\n  \"hist_%s\": [", k ? "create" : "delete");
			for (unsigned int b = 0; b < HIST_BINS; b++)
				printf("%s%llu", b ? ", " : "", hist[k][b]);
		}
		printf("],\n  \"kworker_cpu_ticks\": %llu,\n  \"kworker_threads\": %d,\n"
		       "  \"kworker_nvcsw\": %ld,\n  \"kworker_nivcsw\": %ld,\n",
		       kwd.ticks, kwd.threads, kwd.nvcsw, kwd.nivcsw);
		printf("  \"reader_blocks\": %llu,\n  \"reader_blocked_ns\": %llu,\n", blocks, blocked_ns);
		printf("  \"flash_kvm_exits\": %lld,\n  \"discards\": %llu,\n", flash_kvm_exits, discards);
	}
	printf("  \"timeline_ns\": [");
	for (int p = 0; p < TIMELINE_POINTS; p++)
		printf("%s%llu", p ? ", " : "", timeline[p]);
	printf("],\n");
	printf("  \"spinners_detail\": [");
	for (int i = 0; i < o.spinners; i++)
		printf("%s{\"exits\": %llu, \"kvm_exits\": %lld, \"cpu\": %d, \"error\": %d, \"cpu_ns\": %llu}",
		       i ? ", " : "", spinners[i].exits, spinners[i].kvm_exits, spinners[i].cpu_seen,
		       spinners[i].error, spinners[i].cpu_ns);
	printf("],\n  \"flash_cpu_seen\": %d,\n  \"flash_thread_cpu_ns\": %llu,\n", flash_cpu_seen,
	       flash_thread_ns);
	printf("  \"flash_thread_nvcsw\": %ld,\n  \"flash_thread_nivcsw\": %ld,\n", flash_ru.ru_nvcsw,
	       flash_ru.ru_nivcsw);
	printf("  \"stat_window_ns\": %llu,\n", stat_t1 - stat_t0);
	printf("  \"clk_tck\": %ld,\n", sysconf(_SC_CLK_TCK));
	print_cpu_times("proc_stat_delta", stat0, stat1, ncpu_lines);
	printf("  \"rusage\": {\"user_us\": %lld, \"system_us\": %lld, \"nvcsw\": %ld, \"nivcsw\": %ld}\n}\n",
	       (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec,
	       (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec,
	       ru.ru_nvcsw, ru.ru_nivcsw);
	fflush(stdout);
	return guest_status == 1 ? 0 : 2;
}

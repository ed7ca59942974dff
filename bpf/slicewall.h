/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Structures and constants shared by the eBPF gate (bpf/gate.bpf.c) and the daemon
 * (src/kernel/abi.rs mirrors every definition here with #[repr(C)]; keep both in step).
 */
#ifndef SLICEWALL_H
#define SLICEWALL_H

#include <linux/types.h>

/* Verdicts stored in candidates and reported in events. */
#define SLICEWALL_VERDICT_ALLOW 1
#define SLICEWALL_VERDICT_DENY 2

/* Reasons for a verdict, reported in events. */
#define SLICEWALL_REASON_RULE 1
#define SLICEWALL_REASON_NO_RULE 2
#define SLICEWALL_REASON_ASK_FALLBACK 3
#define SLICEWALL_REASON_FAIL_MODE 4
#define SLICEWALL_REASON_PENDING 5
#define SLICEWALL_REASON_LIMIT 6 /* a map was full; the fail mode's verdict applies */
#define SLICEWALL_REASON_SILENT_ALLOW 7 /* an "ask" rule in mode silent-allow */
#define SLICEWALL_REASON_SILENT_DENY 8  /* an "ask" rule in mode silent-deny */
/* Reasons only the daemon gives, for flows that waited on a prompt. */
#define SLICEWALL_REASON_PROMPT_ANSWER 9
#define SLICEWALL_REASON_TIMEOUT 10
#define SLICEWALL_REASON_NO_AGENT 11
#define SLICEWALL_REASON_PROMPT_LIMIT 12

/* Event kinds sent to the daemon through the ring buffer. */
#define SLICEWALL_EVENT_EXEC 1     /* a guarded process called execve(): identify it again */
#define SLICEWALL_EVENT_DECISION 2 /* the gate decided a flow: audit it */
#define SLICEWALL_EVENT_PENDING 3  /* the gate could not decide: the daemon must */

/* Candidate flags. */
#define SLICEWALL_CANDIDATE_ASK 1 /* an "ask" rule; the verdict is the configured fallback */
#define SLICEWALL_CANDIDATE_NEEDS_EXE 2 /* names an executable the gate does not know yet */

/* What an "ask" candidate does, slicewall_config.ask_mode. */
#define SLICEWALL_ASK_FALLBACK 0     /* the candidate's compiled verdict (--ask-fallback) */
#define SLICEWALL_ASK_PROMPT 1       /* hand the flow to the daemon, which asks the user */
#define SLICEWALL_ASK_SILENT_ALLOW 2 /* allow, reason silent-allow */
#define SLICEWALL_ASK_SILENT_DENY 3  /* deny, reason silent-deny */

/* Socket flags kept in socket storage. */
#define SLICEWALL_SOCK_HELD 1
#define SLICEWALL_SOCK_RTO_BOUNDED 2 /* the gate lowered the socket's maximum RTO while held */

/* States of a held socket. */
#define SLICEWALL_HELD_WAITING 1
#define SLICEWALL_HELD_DENIED 2

/* Candidates scanned per address prefix; longer lists are decided by the daemon. */
#define SLICEWALL_LIST_MAX 32
#define SLICEWALL_LIST_OVERFLOW 0xffffffffu

/* Counters in slicewall_stats. */
#define SLICEWALL_STAT_EVENTS_LOST 0
#define SLICEWALL_STAT_DECISIONS 1
#define SLICEWALL_STAT_PENDING 2
#define SLICEWALL_STAT_RTO_BOUND_FAILED 3 /* bpf_setsockopt(TCP_RTO_MAX_MS) failed on a held socket */
#define SLICEWALL_STAT_COUNT 4

/* Levels below the guarded cgroup's level in the daemon's cgroup namespace at which exec tracking
 * looks for it. Inside a cgroup namespace the namespace root is at level 0, while BPF helpers
 * count levels from the root of the whole hierarchy. */
#define SLICEWALL_GUARD_LEVEL_SEARCH 16

/* Identifiers of the policy, exe and rule tables are never 0; 0 means "none". */
#define SLICEWALL_POLICY_NONE 0

struct slicewall_config {
	__u32 daemon_present;   /* 1 while a daemon serves pending flows */
	__u32 fail_verdict;     /* verdict for pending flows while no daemon runs */
	__u32 hold_rto_jiffies; /* initial SYN retransmission timeout of a held socket */
	__u32 global_policy;    /* policy of the rules without identity selectors */
	__u32 next_id;          /* identifier allocator shared by successive daemons */
	__u32 guard_level;      /* depth of the guarded cgroup below the cgroup v2 root */
	__u64 guard_cgroup_id;  /* the guarded cgroup; exec tracking ignores tasks outside it */
	__u32 generation;       /* changes whenever the rules change, voiding cached verdicts */
	__u32 ask_mode;         /* SLICEWALL_ASK_* */
	/* The daemon's PID namespace as the device and inode number of its nsfs file, which
	 * bpf_get_ns_current_pid_tgid() takes; process IDs in events are in this namespace.
	 * pidns_ino 0 means the initial PID namespace, whose IDs bpf_get_current_pid_tgid()
	 * returns for every task. */
	__u64 pidns_dev;
	__u64 pidns_ino;
	/* SYN retransmissions of a held socket (TCP_SYNCNT), enough to outlast a prompt; 0 leaves
	 * the socket's own. */
	__u32 hold_syn_retries;
	/* Maximum retransmission timeout of a held socket in milliseconds (TCP_RTO_MAX_MS), which
	 * bounds the wait between an "allow" and the next SYN; 0 leaves the socket's own. */
	__u32 hold_rto_max_ms;
};

struct slicewall_task {
	__u32 exe_id;
	__u32 padding;
	__u64 exec_ns; /* the exec (see slicewall_execs) this executable was read for */
};

/* Key of slicewall_units: the policy of the processes of a cgroup and user whose executable the
 * gate does not know yet, with SLICEWALL_CANDIDATE_NEEDS_EXE on the rules that name one. */
struct slicewall_unit_key {
	__u64 cgroup_id;
	__u32 uid;
	__u32 padding;
};

struct slicewall_subject_key {
	__u64 cgroup_id;
	__u32 exe_id;
	__u32 uid;
};

/* Address families in prefix keys. An IPv4-mapped IPv6 address is IPv4. */
#define SLICEWALL_FAMILY_IPV4 4
#define SLICEWALL_FAMILY_IPV6 6

struct slicewall_prefix_key {
	__u32 prefixlen; /* 32 bits of policy, 8 of family, then address bits */
	__u32 policy;
	__u8 family;
	__u8 address[16]; /* IPv4 in the first 4 bytes */
	__u8 padding[3];
};

struct slicewall_candidate {
	__u64 rank;
	__u32 rule_id;
	__u16 port_first;
	__u16 port_last;
	__u8 protocol; /* 0 = any, else IPPROTO_TCP or IPPROTO_UDP */
	__u8 verdict;
	__u8 flags;
	__u8 padding[5];
};

struct slicewall_list {
	__u32 length; /* SLICEWALL_LIST_OVERFLOW: too long for the gate, ask the daemon */
	__u32 padding;
	struct slicewall_candidate candidates[SLICEWALL_LIST_MAX];
};

struct slicewall_sock {
	__u64 cgroup_id; /* cgroup of the task that created the socket */
	__u32 flags;
	/* The socket's last decision. A socket that sends datagram after datagram to one
	 * destination makes one flow: later datagrams reuse the verdict while the rules, the
	 * process and every executable stay the same, and the flow is audited once. */
	__u32 last_rule_id;
	__u64 last_exec_epoch;
	__u32 last_generation;
	__u32 last_tgid;
	__u32 last_uid;
	__u8 last_address[16];
	__u16 last_port;
	__u8 last_protocol;
	__u8 last_verdict;
};

struct slicewall_event {
	__u32 kind;
	__u32 tgid;
	__u64 cookie;
	__u64 exec_ns; /* the process's last exec, see slicewall_execs */
	__u64 cgroup_id;
	__u32 uid;
	__u32 exe_id;
	__u32 rule_id;
	__u8 verdict;
	__u8 reason;
	__u8 protocol;
	__u8 padding;
	__u16 port;
	__u16 padding2;
	__u8 address[16];
	char comm[16];
};

struct slicewall_held {
	struct slicewall_event flow;
	__u64 since_ns; /* CLOCK_MONOTONIC time the hold began */
	__u32 state;
	__u16 source_port;
	__u16 padding;
	__u8 source_address[16];
};

#endif

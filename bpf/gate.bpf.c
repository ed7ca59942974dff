/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The slicewall gate: decides each new outbound flow of the guarded cgroup subtree.
 *
 * connect4/connect6 (TCP and UDP connect) and sendmsg4/sendmsg6 (unconnected UDP) look up who
 * is connecting (socket cgroup, executable of the calling process, uid) in maps the daemon
 * fills, then evaluate the compiled rules of that identity and of everyone. What the maps cannot
 * decide goes to the daemon: a connect is held (allowed by the syscall, but every packet of the
 * socket is dropped at egress until the daemon decides), and a datagram is rejected.
 *
 * Only context structs and helpers are used, so the programs load without kernel BTF.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "slicewall.h"

#define AF_INET 2
#define AF_INET6 10

#define SK_PASS 1
#define SK_DROP 0

#define SOL_TCP 6
#define TCP_SYNCNT 7
/* Linux 6.15 and later; older kernels reject it and the held socket keeps its backoff. */
#define TCP_RTO_MAX_MS 44
/* The kernel's default maximum RTO (TCP_RTO_MAX), restored once a held connection is up. */
#define DEFAULT_RTO_MAX_MS 120000

/* Map sizes are placeholders: the daemon sets every max_entries before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct slicewall_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct slicewall_task);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_tasks SEC(".maps");

/* When each guarded process last called execve() (bpf_ktime_get_ns), written only here. A task
 * entry counts only while its exec_ns matches, so an executable the daemon read before a later
 * exec is never used for the new program. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_execs SEC(".maps");

/* Counts the execs in the guarded subtree. A verdict a socket cached stays valid only while this
 * does not change, because an exec may have replaced the program that owns the socket. Kept out
 * of slicewall_config, which the daemon rewrites whole. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_exec_epoch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct slicewall_unit_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_units SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct slicewall_subject_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_subjects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__type(key, struct slicewall_prefix_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct slicewall_list);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_lists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct slicewall_sock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct slicewall_held);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_held SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLICEWALL_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slicewall_stats SEC(".maps");

struct flow {
	__u64 cgroup_id;
	__u64 cookie;
	__u64 exec_ns;
	__u32 tgid;
	__u32 uid;
	__u32 exe_id;
	__u16 port;
	__u8 protocol;
	__u8 family;
	__u8 address[16]; /* as in events: IPv6, with IPv4 as ::ffff:a.b.c.d */
};

struct decision {
	__u64 rank;
	__u32 rule_id;
	__u8 verdict;
	__u8 reason;
	__u8 flags; /* of the winning candidate */
};

static __always_inline void count(__u32 stat)
{
	__u64 *value = bpf_map_lookup_elem(&slicewall_stats, &stat);

	if (value)
		*value += 1;
}

static __always_inline struct slicewall_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&slicewall_config, &zero);
}

/* Returns the calling process's ID (tgid) in the daemon's PID namespace, which is the ID the daemon
 * finds under its /proc, and the thread ID in *pid. Returns 0 for a task in another PID namespace
 * (a nested container), whose IDs the daemon cannot resolve. */
static __always_inline __u32 current_tgid(const struct slicewall_config *cfg, __u32 *pid)
{
	struct bpf_pidns_info ns = {};
	__u64 pid_tgid;

	if (!cfg->pidns_ino) {
		pid_tgid = bpf_get_current_pid_tgid();
		*pid = (__u32)pid_tgid;
		return pid_tgid >> 32;
	}
	if (bpf_get_ns_current_pid_tgid(cfg->pidns_dev, cfg->pidns_ino, &ns, sizeof(ns))) {
		*pid = 0;
		return 0;
	}
	*pid = ns.pid;
	return ns.tgid;
}

/* Checks whether the calling task lies in the guarded cgroup subtree. The guarded cgroup's level
 * counted from the root of the whole hierarchy is at least its level in the daemon's cgroup
 * namespace, and more when that namespace is not the root one, so the levels below are searched
 * too. */
static __always_inline int in_guarded_subtree(const struct slicewall_config *cfg)
{
	__u64 ancestor;
	int i;

	for (i = 0; i < SLICEWALL_GUARD_LEVEL_SEARCH; i++) {
		ancestor = bpf_get_current_ancestor_cgroup_id(cfg->guard_level + i);
		if (ancestor == cfg->guard_cgroup_id)
			return 1;
		if (!ancestor) /* the task's own cgroup is above this level */
			return 0;
	}
	return 0;
}

static __always_inline void fill_event(struct slicewall_event *event, __u32 kind, const struct flow *flow)
{
	event->kind = kind;
	event->tgid = flow->tgid;
	event->cookie = flow->cookie;
	event->exec_ns = flow->exec_ns;
	event->cgroup_id = flow->cgroup_id;
	event->uid = flow->uid;
	event->exe_id = flow->exe_id;
	event->rule_id = 0;
	event->verdict = 0;
	event->reason = 0;
	event->protocol = flow->protocol;
	event->padding = 0;
	event->port = flow->port;
	event->padding2 = 0;
	__builtin_memcpy(event->address, flow->address, sizeof(event->address));
	bpf_get_current_comm(event->comm, sizeof(event->comm));
}

static __always_inline void send_event(__u32 kind, const struct flow *flow, const struct decision *decision)
{
	struct slicewall_event *event;
	/* Audit records can wait for the daemon's next periodic read; flows that need the daemon
	 * wake it at once. */
	__u64 wakeup = kind == SLICEWALL_EVENT_DECISION ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP;

	event = bpf_ringbuf_reserve(&slicewall_events, sizeof(*event), 0);
	if (!event) {
		count(SLICEWALL_STAT_EVENTS_LOST);
		return;
	}
	fill_event(event, kind, flow);
	if (decision) {
		event->rule_id = decision->rule_id;
		event->verdict = decision->verdict;
		event->reason = decision->reason;
	}
	bpf_ringbuf_submit(event, wakeup);
}

/* Writes an IPv4 address (network order) as ::ffff:a.b.c.d into a zeroed 16-byte buffer. */
static __always_inline void set_ipv4(__u8 *address, __u32 ip4)
{
	address[10] = 0xff;
	address[11] = 0xff;
	__builtin_memcpy(&address[12], &ip4, 4);
}

/* Writes an IPv6 address from the four 32-bit words that context fields are read as. */
static __always_inline void set_ipv6(__u8 *address, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	__builtin_memcpy(&address[0], &w0, 4);
	__builtin_memcpy(&address[4], &w1, 4);
	__builtin_memcpy(&address[8], &w2, 4);
	__builtin_memcpy(&address[12], &w3, 4);
}

static __always_inline int is_ipv4_mapped(const __u8 *address)
{
	int i;

	for (i = 0; i < 10; i++)
		if (address[i])
			return 0;
	return address[10] == 0xff && address[11] == 0xff;
}

static __always_inline int candidate_matches(const struct slicewall_candidate *candidate, const struct flow *flow)
{
	if (candidate->protocol && candidate->protocol != flow->protocol)
		return 0;
	return flow->port >= candidate->port_first && flow->port <= candidate->port_last;
}

/* Finds the best candidate of one policy for the flow. Returns -1 when the list is too long for
 * the gate, 1 when a candidate matched (written to *best if it outranks it), 0 otherwise. */
static __always_inline int evaluate_policy(__u32 policy, const struct flow *flow, struct decision *best)
{
	struct slicewall_prefix_key key = {
		.prefixlen = 32 + 8 + 128,
		.policy = policy,
		.family = flow->family,
	};
	struct slicewall_list *list;
	__u32 *list_id;
	__u32 i;

	if (policy == SLICEWALL_POLICY_NONE)
		return 0;
	if (flow->family == SLICEWALL_FAMILY_IPV4)
		__builtin_memcpy(key.address, &flow->address[12], 4);
	else
		__builtin_memcpy(key.address, flow->address, sizeof(key.address));
	list_id = bpf_map_lookup_elem(&slicewall_prefixes, &key);
	if (!list_id)
		return 0;
	list = bpf_map_lookup_elem(&slicewall_lists, list_id);
	if (!list)
		return 0;
	if (list->length == SLICEWALL_LIST_OVERFLOW)
		return -1;

	/* Candidates are sorted by rank, highest first, so the first match is this policy's best. */
	for (i = 0; i < SLICEWALL_LIST_MAX; i++) {
		const struct slicewall_candidate *candidate = &list->candidates[i];

		if (i >= list->length)
			break;
		if (!candidate_matches(candidate, flow))
			continue;
		if (candidate->rank > best->rank || !best->rule_id) {
			best->rank = candidate->rank;
			best->rule_id = candidate->rule_id;
			best->verdict = candidate->verdict;
			best->flags = candidate->flags;
			best->reason = candidate->flags & SLICEWALL_CANDIDATE_ASK ? SLICEWALL_REASON_ASK_FALLBACK
										   : SLICEWALL_REASON_RULE;
		}
		return 1;
	}
	return 0;
}

static __always_inline int same_address(const __u8 *a, const __u8 *b)
{
	__u64 a_high, a_low, b_high, b_low;

	/* clang turns __builtin_memcmp into a call the loader cannot resolve. */
	__builtin_memcpy(&a_high, a, 8);
	__builtin_memcpy(&a_low, a + 8, 8);
	__builtin_memcpy(&b_high, b, 8);
	__builtin_memcpy(&b_low, b + 8, 8);
	return a_high == b_high && a_low == b_low;
}

static __always_inline int same_destination(const struct slicewall_sock *storage, const struct flow *flow)
{
	return storage->last_port == flow->port && storage->last_protocol == flow->protocol &&
	       same_address(storage->last_address, flow->address);
}

/* Returns the socket's last verdict if it still holds for this flow, else 0. */
static __always_inline __u8 cached_verdict(const struct slicewall_sock *storage, const struct slicewall_config *cfg,
					   __u64 exec_epoch, const struct flow *flow)
{
	if (!storage || storage->last_generation != cfg->generation || storage->last_exec_epoch != exec_epoch ||
	    storage->last_tgid != flow->tgid || storage->last_uid != flow->uid || !same_destination(storage, flow))
		return 0;
	return storage->last_verdict;
}

/* Remembers a decision on the socket. Returns 1 when it repeats the last audited one (same
 * destination, verdict and rule), which needs no new audit record. */
static __always_inline int remember_decision(struct slicewall_sock *storage, const struct slicewall_config *cfg,
					     __u64 exec_epoch, const struct flow *flow, const struct decision *decision)
{
	int repeat;

	if (!storage)
		return 0;
	repeat = same_destination(storage, flow) && storage->last_verdict == decision->verdict &&
		 storage->last_rule_id == decision->rule_id;
	storage->last_generation = cfg->generation;
	storage->last_exec_epoch = exec_epoch;
	storage->last_tgid = flow->tgid;
	storage->last_uid = flow->uid;
	storage->last_port = flow->port;
	storage->last_protocol = flow->protocol;
	storage->last_verdict = decision->verdict;
	storage->last_rule_id = decision->rule_id;
	__builtin_memcpy(storage->last_address, flow->address, sizeof(flow->address));
	return repeat;
}

static __always_inline __u64 exec_epoch(void)
{
	__u32 zero = 0;
	__u64 *epoch = bpf_map_lookup_elem(&slicewall_exec_epoch, &zero);

	return epoch ? *epoch : 0;
}

/* Hands a flow the gate cannot decide to the daemon. A connect is held: the syscall goes on,
 * and the egress program drops the socket's packets until the daemon removes the hold. */
static __always_inline int pend(void *sk, const struct flow *flow, int is_connect)
{
	struct slicewall_config *cfg = config();
	struct decision fail = { .reason = SLICEWALL_REASON_FAIL_MODE };
	struct slicewall_held held = {};
	struct slicewall_sock *storage;

	if (!cfg || !cfg->daemon_present) {
		fail.verdict = cfg ? cfg->fail_verdict : SLICEWALL_VERDICT_DENY;
		send_event(SLICEWALL_EVENT_DECISION, flow, &fail);
		return fail.verdict == SLICEWALL_VERDICT_ALLOW ? SK_PASS : SK_DROP;
	}

	count(SLICEWALL_STAT_PENDING);
	if (!is_connect) {
		/* A datagram cannot wait: it is rejected, and the daemon learns the identity so the
		 * next one is decided in the gate. */
		send_event(SLICEWALL_EVENT_PENDING, flow, 0);
		return SK_DROP;
	}

	fill_event(&held.flow, SLICEWALL_EVENT_PENDING, flow);
	held.state = SLICEWALL_HELD_WAITING;
	held.since_ns = bpf_ktime_get_ns();
	storage = bpf_sk_storage_get(&slicewall_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!storage || bpf_map_update_elem(&slicewall_held, &flow->cookie, &held, BPF_ANY)) {
		/* No room to hold the flow: the fail mode decides, audited with reason "limit". */
		fail.verdict = cfg->fail_verdict;
		fail.reason = SLICEWALL_REASON_LIMIT;
		send_event(SLICEWALL_EVENT_DECISION, flow, &fail);
		return fail.verdict == SLICEWALL_VERDICT_ALLOW ? SK_PASS : SK_DROP;
	}
	storage->flags |= SLICEWALL_SOCK_HELD;
	send_event(SLICEWALL_EVENT_PENDING, flow, 0);
	return SK_PASS;
}

/* family is a constant at every call, so each program only reads the context fields its
 * attach type allows (connect4 may not touch user_ip6). */
static __always_inline int gate_impl(struct bpf_sock_addr *ctx, const int family, const int is_connect)
{
	struct decision best = {};
	struct slicewall_subject_key subject = {};
	struct slicewall_unit_key unit = {};
	struct slicewall_config *cfg;
	struct slicewall_sock *storage;
	struct slicewall_task *task;
	struct flow flow = {};
	__u64 *exec_ns;
	__u64 epoch;
	__u32 *policy;
	__u32 pid;
	__u8 cached;
	int result;

	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SK_PASS;
	flow.protocol = ctx->protocol;
	flow.port = bpf_ntohs(ctx->user_port);
	/* An IPv4-mapped IPv6 address gets the same ::ffff:a.b.c.d form as IPv4, so it is judged as
	 * the IPv4 address it carries. */
	if (family == AF_INET)
		set_ipv4(flow.address, ctx->user_ip4);
	else
		set_ipv6(flow.address, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	flow.family = is_ipv4_mapped(flow.address) ? SLICEWALL_FAMILY_IPV4 : SLICEWALL_FAMILY_IPV6;

	/* The socket's cgroup is the one it was created in, which is also what nftables matches. */
	storage = bpf_sk_storage_get(&slicewall_socks, ctx->sk, 0, 0);
	flow.cgroup_id = storage && storage->cgroup_id ? storage->cgroup_id : bpf_get_current_cgroup_id();
	flow.uid = (__u32)bpf_get_current_uid_gid();

	cfg = config();
	if (!cfg)
		return SK_DROP;
	flow.tgid = current_tgid(cfg, &pid);
	epoch = exec_epoch();
	cached = cached_verdict(storage, cfg, epoch, &flow);
	if (cached)
		return cached == SLICEWALL_VERDICT_ALLOW ? SK_PASS : SK_DROP;

	/* Past the cache: the cookie keys held flows and events. */
	flow.cookie = bpf_get_socket_cookie(ctx);
	exec_ns = flow.tgid ? bpf_map_lookup_elem(&slicewall_execs, &flow.tgid) : 0;
	flow.exec_ns = exec_ns ? *exec_ns : 0;
	task = flow.tgid ? bpf_map_lookup_elem(&slicewall_tasks, &flow.tgid) : 0;
	if (task && task->exec_ns == flow.exec_ns) {
		flow.exe_id = task->exe_id;
		subject.cgroup_id = flow.cgroup_id;
		subject.exe_id = flow.exe_id;
		subject.uid = flow.uid;
		policy = bpf_map_lookup_elem(&slicewall_subjects, &subject);
	} else if (!is_connect || !flow.tgid) {
		/* The executable is not known yet (a new program, or one the daemon is still hashing).
		 * A datagram cannot wait, so the cgroup's policy decides it whenever no rule naming an
		 * executable could decide it differently. A connect waits for the daemon instead: the
		 * process stays alive while it waits, so its audit record names the executable. A task
		 * in another PID namespace (tgid 0) can never be identified, so its connects are
		 * decided like datagrams, and the fail mode decides those the cgroup's policy cannot. */
		unit.cgroup_id = flow.cgroup_id;
		unit.uid = flow.uid;
		policy = bpf_map_lookup_elem(&slicewall_units, &unit);
	} else {
		policy = 0;
	}
	if (!policy)
		return pend(ctx->sk, &flow, is_connect);

	result = evaluate_policy(*policy, &flow, &best);
	if (result < 0 || evaluate_policy(cfg->global_policy, &flow, &best) < 0)
		return pend(ctx->sk, &flow, is_connect);
	if (best.rule_id && (best.flags & SLICEWALL_CANDIDATE_NEEDS_EXE))
		return pend(ctx->sk, &flow, is_connect);
	if (best.rule_id && (best.flags & SLICEWALL_CANDIDATE_ASK)) {
		switch (cfg->ask_mode) {
		case SLICEWALL_ASK_PROMPT:
			/* The daemon asks the user; nothing is cached, so every flow goes to it. */
			return pend(ctx->sk, &flow, is_connect);
		case SLICEWALL_ASK_SILENT_ALLOW:
			best.verdict = SLICEWALL_VERDICT_ALLOW;
			best.reason = SLICEWALL_REASON_SILENT_ALLOW;
			break;
		case SLICEWALL_ASK_SILENT_DENY:
			best.verdict = SLICEWALL_VERDICT_DENY;
			best.reason = SLICEWALL_REASON_SILENT_DENY;
			break;
		default:
			break;
		}
	}

	if (!best.rule_id) {
		best.verdict = SLICEWALL_VERDICT_ALLOW;
		best.reason = SLICEWALL_REASON_NO_RULE;
	}
	count(SLICEWALL_STAT_DECISIONS);
	if (!remember_decision(storage, cfg, epoch, &flow, &best))
		send_event(SLICEWALL_EVENT_DECISION, &flow, &best);
	return best.verdict == SLICEWALL_VERDICT_ALLOW ? SK_PASS : SK_DROP;
}

SEC("cgroup/connect4")
int slicewall_connect4(struct bpf_sock_addr *ctx)
{
	return gate_impl(ctx, AF_INET, 1);
}

SEC("cgroup/connect6")
int slicewall_connect6(struct bpf_sock_addr *ctx)
{
	return gate_impl(ctx, AF_INET6, 1);
}

SEC("cgroup/sendmsg4")
int slicewall_sendmsg4(struct bpf_sock_addr *ctx)
{
	return gate_impl(ctx, AF_INET, 0);
}

SEC("cgroup/sendmsg6")
int slicewall_sendmsg6(struct bpf_sock_addr *ctx)
{
	return gate_impl(ctx, AF_INET6, 0);
}

/* Records the creating task's cgroup, so that a process moved to another cgroup after creating
 * a socket is still judged by the cgroup the socket belongs to. */
SEC("cgroup/sock_create")
int slicewall_sock_create(struct bpf_sock *sk)
{
	struct slicewall_sock *storage;

	if (sk->protocol != IPPROTO_TCP && sk->protocol != IPPROTO_UDP)
		return SK_PASS;
	storage = bpf_sk_storage_get(&slicewall_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (storage)
		storage->cgroup_id = bpf_get_current_cgroup_id();
	return SK_PASS;
}

SEC("cgroup/sock_release")
int slicewall_sock_release(struct bpf_sock *sk)
{
	struct slicewall_sock *storage;
	__u64 cookie;

	storage = bpf_sk_storage_get(&slicewall_socks, sk, 0, 0);
	if (!storage || !(storage->flags & SLICEWALL_SOCK_HELD))
		return SK_PASS;
	cookie = bpf_get_socket_cookie(sk);
	bpf_map_delete_elem(&slicewall_held, &cookie);
	return SK_PASS;
}

/* Drops every packet of a held socket; the hold ends when the daemon deletes its entry. */
SEC("cgroup_skb/egress")
int slicewall_egress(struct __sk_buff *skb)
{
	struct slicewall_sock *storage;
	struct slicewall_held *held;
	struct bpf_sock *sk;
	__u64 cookie;

	sk = skb->sk;
	if (!sk)
		return SK_PASS;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return SK_PASS;
	storage = bpf_sk_storage_get(&slicewall_socks, sk, 0, 0);
	if (!storage || !(storage->flags & SLICEWALL_SOCK_HELD))
		return SK_PASS;

	cookie = bpf_get_socket_cookie(skb);
	held = bpf_map_lookup_elem(&slicewall_held, &cookie);
	if (!held) {
		storage->flags &= ~SLICEWALL_SOCK_HELD;
		return SK_PASS;
	}
	if (!held->source_port) {
		held->source_port = (__u16)sk->src_port;
		if (sk->family == AF_INET)
			set_ipv4(held->source_address, sk->src_ip4);
		else
			set_ipv6(held->source_address, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
	}
	return SK_DROP;
}

/* Shortens the first SYN retransmission of a held socket, so that a connection the daemon
 * allows completes soon after the verdict instead of after the default one second. While the
 * user is asked, the SYN goes on being retransmitted: the retransmission count is raised so the
 * connect outlasts the prompt, and the maximum RTO is lowered so the SYN after an "allow" leaves
 * within that bound instead of after an exponential backoff of many seconds. Both are set back
 * once the connection is established. */
SEC("sockops")
int slicewall_sockops(struct bpf_sock_ops *ops)
{
	struct slicewall_sock *storage;
	struct slicewall_config *cfg;
	struct bpf_sock *sk;
	int value;

	if (ops->op != BPF_SOCK_OPS_TIMEOUT_INIT && ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	sk = ops->sk;
	if (!sk)
		return 1;
	storage = bpf_sk_storage_get(&slicewall_socks, sk, 0, 0);
	if (!storage)
		return 1;
	if (ops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		if (storage->flags & SLICEWALL_SOCK_RTO_BOUNDED) {
			value = DEFAULT_RTO_MAX_MS;
			bpf_setsockopt(ops, SOL_TCP, TCP_RTO_MAX_MS, &value, sizeof(value));
			storage->flags &= ~SLICEWALL_SOCK_RTO_BOUNDED;
		}
		return 1;
	}
	if (!(storage->flags & SLICEWALL_SOCK_HELD))
		return 1;
	cfg = config();
	if (!cfg)
		return 1;
	if (cfg->hold_syn_retries) {
		value = cfg->hold_syn_retries;
		bpf_setsockopt(ops, SOL_TCP, TCP_SYNCNT, &value, sizeof(value));
	}
	if (cfg->hold_rto_max_ms) {
		value = cfg->hold_rto_max_ms;
		if (bpf_setsockopt(ops, SOL_TCP, TCP_RTO_MAX_MS, &value, sizeof(value)))
			count(SLICEWALL_STAT_RTO_BOUND_FAILED);
		else
			storage->flags |= SLICEWALL_SOCK_RTO_BOUNDED;
	}
	if (cfg->hold_rto_jiffies)
		ops->reply = cfg->hold_rto_jiffies;
	return 1;
}

/* A guarded process replaced its image: forget its executable until the daemon has hashed the
 * new one, so no flow of the new program is judged as the old one. */
SEC("raw_tracepoint/sched_process_exec")
int slicewall_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct slicewall_config *cfg = config();
	struct flow flow = {};
	__u32 zero = 0;
	__u64 *epoch;
	__u32 pid;

	if (!cfg || !in_guarded_subtree(cfg))
		return 0;
	/* A task outside the daemon's PID namespace is never identified, so nothing to forget. */
	flow.tgid = current_tgid(cfg, &pid);
	if (!flow.tgid)
		return 0;
	flow.cgroup_id = bpf_get_current_cgroup_id();
	flow.uid = (__u32)bpf_get_current_uid_gid();
	flow.exec_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&slicewall_execs, &flow.tgid, &flow.exec_ns, BPF_ANY);
	epoch = bpf_map_lookup_elem(&slicewall_exec_epoch, &zero);
	if (epoch)
		__sync_fetch_and_add(epoch, 1);
	bpf_map_delete_elem(&slicewall_tasks, &flow.tgid);
	send_event(SLICEWALL_EVENT_EXEC, &flow, 0);
	return 0;
}

/* Forgets a process when its thread group leader exits, so a reused PID starts unknown. Tasks in
 * other PID namespaces than the daemon's (tgid 0) are ignored: their IDs are not the map keys. */
SEC("raw_tracepoint/sched_process_exit")
int slicewall_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct slicewall_config *cfg = config();
	__u32 pid, tgid;

	if (!cfg)
		return 0;
	tgid = current_tgid(cfg, &pid);
	if (!tgid || pid != tgid)
		return 0;
	bpf_map_delete_elem(&slicewall_tasks, &tgid);
	bpf_map_delete_elem(&slicewall_execs, &tgid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

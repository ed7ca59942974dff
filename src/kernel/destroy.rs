//! Aborts a TCP socket that another process owns, with a `SOCK_DESTROY` request on a
//! `NETLINK_SOCK_DIAG` socket.
//!
//! sock_diag looks sockets up in the network namespace of the netlink socket that carries the
//! request. The request is therefore sent from a short-lived thread that first enters the network
//! namespace of the process that owns the socket, and the calling thread keeps its namespace.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::thread;

use netlink_packet_core::{
    DecodeError, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// Cookie value that makes the kernel skip the cookie check (`INET_DIAG_NOCOOKIE` in both
/// 32-bit words), so a request carrying it would match any socket with the same addresses.
const NO_COOKIE: u64 = u64::MAX;

/// Sequence number of the one request sent on each netlink socket.
const REQUEST_SEQUENCE: u32 = 1;

/// A new TCP connection that slicewall holds back while it decides, and the process that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldSocket {
    /// ID of a process in the socket's network namespace, normally the one that called `connect()`.
    pub pid: u32,
    /// Socket cookie, as `bpf_get_socket_cookie()` and `getsockopt(SO_COOKIE)` return it.
    pub cookie: u64,
    /// Local address and port of the socket.
    pub source: SocketAddr,
    /// Remote address and port that the socket connects to.
    pub destination: SocketAddr,
}

impl fmt::Display for HeldSocket {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "tcp socket {} -> {} (cookie {}, pid {})",
            self.source, self.destination, self.cookie, self.pid
        )
    }
}

/// Failure to destroy a [`HeldSocket`].
#[derive(Debug, thiserror::Error)]
pub enum DestroyError {
    /// The socket no longer exists. The kernel found no socket with these addresses, or found one
    /// with another cookie, which means the held socket was closed and its addresses reused.
    #[error("{socket} not found")]
    NotFound { socket: HeldSocket },

    #[error("invalid {socket}: source and destination address families differ")]
    MixedAddressFamilies { socket: HeldSocket },

    #[error("invalid {socket}: cookie {NO_COOKIE:#x} disables the cookie check")]
    WildcardCookie { socket: HeldSocket },

    #[error("failed to open network namespace /proc/{pid}/ns/net")]
    OpenNamespace { pid: u32, source: io::Error },

    #[error("failed to start a thread to destroy {socket}")]
    SpawnThread {
        socket: HeldSocket,
        source: io::Error,
    },

    #[error("failed to enter network namespace of pid {pid}")]
    EnterNamespace { pid: u32, source: io::Error },

    #[error("failed to open a NETLINK_SOCK_DIAG socket in the network namespace of pid {pid}")]
    OpenNetlink { pid: u32, source: io::Error },

    #[error("failed to send SOCK_DESTROY for {socket}")]
    Send {
        socket: HeldSocket,
        source: io::Error,
    },

    #[error("failed to receive the reply to SOCK_DESTROY for {socket}")]
    Receive {
        socket: HeldSocket,
        source: io::Error,
    },

    #[error("invalid reply to SOCK_DESTROY for {socket}")]
    InvalidReply {
        socket: HeldSocket,
        source: DecodeError,
    },

    #[error(
        "unexpected reply to SOCK_DESTROY for {socket}: netlink message type {message_type}, \
         sequence number {sequence_number}"
    )]
    UnexpectedReply {
        socket: HeldSocket,
        message_type: u16,
        sequence_number: u32,
    },

    /// The kernel returned an error other than "not found". EPERM means the caller lacks
    /// CAP_NET_ADMIN over the socket's network namespace, and EOPNOTSUPP means the kernel was
    /// built without `CONFIG_INET_DIAG_DESTROY`.
    #[error("kernel rejected SOCK_DESTROY for {socket}")]
    Rejected {
        socket: HeldSocket,
        source: io::Error,
    },
}

/// Aborts `socket`, so that its pending `connect()`, or the next read or write on an established
/// connection, fails with ECONNABORTED.
///
/// The request runs in the network namespace of `socket.pid`. Entering that namespace needs
/// CAP_SYS_ADMIN, and destroying the socket needs CAP_NET_ADMIN over it. If the pid was reused by
/// a process in another namespace, the cookie still keeps the request from matching another
/// socket. The call blocks on a few system calls and a thread, so async callers should run it on
/// a blocking thread.
///
/// Returns [`DestroyError::NotFound`] when the socket is already gone, which callers may ignore.
pub fn destroy_tcp_socket(socket: &HeldSocket) -> Result<(), DestroyError> {
    let request = encode_request(socket)?;

    let namespace = File::open(format!("/proc/{}/ns/net", socket.pid)).map_err(|source| {
        DestroyError::OpenNamespace {
            pid: socket.pid,
            source,
        }
    })?;

    let reply = thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("sock-destroy".to_owned())
            .spawn_scoped(scope, || {
                exchange_in_namespace(socket, &namespace, &request)
            })
            .map_err(|source| DestroyError::SpawnThread {
                socket: *socket,
                source,
            })?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;

    decode_reply(socket, &reply)?;
    tracing::debug!(%socket, "destroyed held socket");
    Ok(())
}

/// Serializes the `SOCK_DESTROY` netlink message that names `socket`.
fn encode_request(socket: &HeldSocket) -> Result<Vec<u8>, DestroyError> {
    // An IPv6 socket connected to an IPv4-mapped address stays AF_INET6 with the mapped addresses,
    // and the kernel maps the lookup back to IPv4 itself.
    let family = match (socket.source, socket.destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => AF_INET6,
        _ => return Err(DestroyError::MixedAddressFamilies { socket: *socket }),
    };
    if socket.cookie == NO_COOKIE {
        return Err(DestroyError::WildcardCookie { socket: *socket });
    }

    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: SocketId {
            source_port: socket.source.port(),
            destination_port: socket.destination.port(),
            source_address: socket.source.ip(),
            destination_address: socket.destination.ip(),
            interface_id: interface_id(socket),
            cookie: cookie_words(socket.cookie),
        },
    };

    let mut header = NetlinkHeader::default();
    // Without NLM_F_ACK the kernel sends no reply on success.
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = REQUEST_SEQUENCE;

    // SockDiagDestroy sets the netlink message type to SOCK_DESTROY (21) in place of
    // SOCK_DIAG_BY_FAMILY (20).
    let payload = SockDiagDestroy::new(SockDiagMessage::InetRequest(request));
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    message.finalize();

    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    Ok(buffer)
}

/// Returns the interface index that the kernel must match against the socket's bound device.
///
/// The kernel finds a socket bound to a device only when the request names that device. A
/// link-local IPv6 connection is bound to the interface in its scope ID.
// TODO: sockets bound with SO_BINDTODEVICE, or in a VRF, are reported as not found, because
// HeldSocket does not carry the bound device index.
fn interface_id(socket: &HeldSocket) -> u32 {
    let scope_id = |address: SocketAddr| match address {
        SocketAddr::V6(address) => address.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    match scope_id(socket.destination) {
        0 => scope_id(socket.source),
        destination_scope => destination_scope,
    }
}

/// Lays out `cookie` as the kernel's `__u32 idiag_cookie[2]`: the low 32 bits first, each word in
/// host byte order (`sock_diag_check_cookie()` in Linux `net/core/sock_diag.c`).
fn cookie_words(cookie: u64) -> [u8; 8] {
    let low = (cookie as u32).to_ne_bytes();
    let high = ((cookie >> 32) as u32).to_ne_bytes();

    let mut words = [0; 8];
    words[..4].copy_from_slice(&low);
    words[4..].copy_from_slice(&high);
    words
}

/// Sends `request` from the calling thread after moving that thread into `namespace`, and
/// returns the kernel's reply. Run it only on a thread that exits afterwards.
fn exchange_in_namespace(
    socket: &HeldSocket,
    namespace: &File,
    request: &[u8],
) -> Result<Vec<u8>, DestroyError> {
    enter_network_namespace(namespace).map_err(|source| DestroyError::EnterNamespace {
        pid: socket.pid,
        source,
    })?;

    let netlink = Socket::new(NETLINK_SOCK_DIAG).map_err(|source| DestroyError::OpenNetlink {
        pid: socket.pid,
        source,
    })?;
    netlink
        .send_to(request, &NetlinkAddr::new(0, 0), 0)
        .map_err(|source| DestroyError::Send {
            socket: *socket,
            source,
        })?;

    // The kernel handles the request inside sendto() (netlink_unicast_kernel() in Linux
    // net/netlink/af_netlink.c) and queues the reply before returning, so this receive never waits.
    let (reply, _) = netlink
        .recv_from_full()
        .map_err(|source| DestroyError::Receive {
            socket: *socket,
            source,
        })?;
    Ok(reply)
}

fn enter_network_namespace(namespace: &File) -> io::Result<()> {
    // SAFETY: setns() only reads the descriptor, which `namespace` keeps open during the call, and
    // it changes the namespace of the calling thread alone, which no Rust invariant depends on.
    let result = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Interprets the kernel's reply to the request for `socket`: an NLMSG_ERROR message whose error
/// code is 0 on success and a negative errno otherwise.
fn decode_reply(socket: &HeldSocket, reply: &[u8]) -> Result<(), DestroyError> {
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(reply).map_err(|source| {
        DestroyError::InvalidReply {
            socket: *socket,
            source,
        }
    })?;

    let error = match message.payload {
        NetlinkPayload::Error(error) if message.header.sequence_number == REQUEST_SEQUENCE => error,
        _ => {
            return Err(DestroyError::UnexpectedReply {
                socket: *socket,
                message_type: message.header.message_type,
                sequence_number: message.header.sequence_number,
            })
        }
    };
    if error.code.is_none() {
        return Ok(());
    }

    let cause = error.to_io();
    match cause.raw_os_error() {
        // The TCP lookup returns ENOENT both when no socket has these addresses and when the one
        // that has them carries another cookie. ESTALE, which sock_diag_check_cookie() returns
        // for a cookie mismatch, means the same in case a kernel passes it on unchanged.
        Some(libc::ENOENT) | Some(libc::ESTALE) => Err(DestroyError::NotFound { socket: *socket }),
        _ => Err(DestroyError::Rejected {
            socket: *socket,
            source: cause,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    use netlink_packet_core::ErrorMessage;
    use netlink_packet_sock_diag::SOCK_DESTROY;

    /// Length of `struct nlmsghdr`.
    const HEADER_LEN: usize = 16;
    /// Length of `struct inet_diag_req_v2`.
    const REQUEST_LEN: usize = 56;

    fn held_v4() -> HeldSocket {
        HeldSocket {
            pid: 4242,
            cookie: 0x0102_0304_0506_0708,
            source: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 40000)),
            destination: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 443)),
        }
    }

    fn held_v6(source: Ipv6Addr, destination: Ipv6Addr, scope_id: u32) -> HeldSocket {
        HeldSocket {
            pid: 4242,
            cookie: 99,
            source: SocketAddr::V6(SocketAddrV6::new(source, 50000, 0, scope_id)),
            destination: SocketAddr::V6(SocketAddrV6::new(destination, 80, 0, scope_id)),
        }
    }

    /// Returns the `inet_diag_req_v2` part of `request`, after the netlink header.
    fn payload(request: &[u8]) -> &[u8] {
        &request[HEADER_LEN..]
    }

    fn reply_with_code(code: i32, sequence_number: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence_number;
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(code);
        let mut message =
            NetlinkMessage::<SockDiagMessage>::new(header, NetlinkPayload::Error(error));
        message.finalize();
        let mut buffer = vec![0; message.buffer_len()];
        message.serialize(&mut buffer);
        buffer
    }

    #[test]
    fn request_header_is_sock_destroy_with_ack() {
        let request = encode_request(&held_v4()).unwrap();

        assert_eq!(request.len(), HEADER_LEN + REQUEST_LEN);
        assert_eq!(
            u32::from_ne_bytes(request[0..4].try_into().unwrap()) as usize,
            request.len()
        );
        assert_eq!(
            u16::from_ne_bytes(request[4..6].try_into().unwrap()),
            SOCK_DESTROY
        );
        assert_eq!(SOCK_DESTROY, 21);
        let flags = u16::from_ne_bytes(request[6..8].try_into().unwrap());
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(
            u32::from_ne_bytes(request[8..12].try_into().unwrap()),
            REQUEST_SEQUENCE
        );
    }

    #[test]
    fn request_v4_layout() {
        let request = encode_request(&held_v4()).unwrap();
        let payload = payload(&request);

        assert_eq!(payload[0], libc::AF_INET as u8);
        assert_eq!(payload[1], libc::IPPROTO_TCP as u8);
        // Ports are in network byte order.
        assert_eq!(&payload[8..10], &40000u16.to_be_bytes());
        assert_eq!(&payload[10..12], &443u16.to_be_bytes());
        // IPv4 addresses fill the first 4 of 16 bytes.
        assert_eq!(&payload[12..16], &[10, 1, 2, 3]);
        assert_eq!(&payload[16..28], &[0; 12]);
        assert_eq!(&payload[28..32], &[192, 0, 2, 7]);
        assert_eq!(&payload[32..44], &[0; 12]);
        // Interface index.
        assert_eq!(&payload[44..48], &[0; 4]);
    }

    #[test]
    fn request_cookie_low_word_first() {
        let request = encode_request(&held_v4()).unwrap();
        let payload = payload(&request);

        assert_eq!(
            u32::from_ne_bytes(payload[48..52].try_into().unwrap()),
            0x0506_0708
        );
        assert_eq!(
            u32::from_ne_bytes(payload[52..56].try_into().unwrap()),
            0x0102_0304
        );
    }

    #[test]
    fn request_v4_mapped_stays_inet6() {
        let source = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped();
        let destination = Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped();
        let request = encode_request(&held_v6(source, destination, 0)).unwrap();
        let payload = payload(&request);

        assert_eq!(payload[0], libc::AF_INET6 as u8);
        assert_eq!(&payload[12..28], &source.octets());
        assert_eq!(&payload[28..44], &destination.octets());
    }

    #[test]
    fn request_link_local_names_interface() {
        let source = "fe80::1".parse().unwrap();
        let destination = "fe80::2".parse().unwrap();
        let request = encode_request(&held_v6(source, destination, 7)).unwrap();
        let payload = payload(&request);

        assert_eq!(u32::from_ne_bytes(payload[44..48].try_into().unwrap()), 7);
    }

    #[test]
    fn request_rejects_mixed_families() {
        let mut socket = held_v4();
        socket.destination = "[::1]:80".parse().unwrap();

        let error = encode_request(&socket).unwrap_err();
        assert!(
            matches!(error, DestroyError::MixedAddressFamilies { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn request_rejects_wildcard_cookie() {
        let mut socket = held_v4();
        socket.cookie = u64::MAX;

        let error = encode_request(&socket).unwrap_err();
        assert!(
            matches!(error, DestroyError::WildcardCookie { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn reply_zero_is_success() {
        let reply = reply_with_code(0, REQUEST_SEQUENCE);

        decode_reply(&held_v4(), &reply).unwrap();
    }

    #[test]
    fn reply_enoent_and_estale_are_not_found() {
        for errno in [libc::ENOENT, libc::ESTALE] {
            let reply = reply_with_code(-errno, REQUEST_SEQUENCE);

            let error = decode_reply(&held_v4(), &reply).unwrap_err();
            assert!(
                matches!(error, DestroyError::NotFound { .. }),
                "errno {errno}: {error:?}"
            );
        }
    }

    #[test]
    fn reply_eperm_is_rejected_with_cause() {
        let reply = reply_with_code(-libc::EPERM, REQUEST_SEQUENCE);

        let error = decode_reply(&held_v4(), &reply).unwrap_err();
        match error {
            DestroyError::Rejected { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::EPERM));
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[test]
    fn reply_other_sequence_is_unexpected() {
        let reply = reply_with_code(0, REQUEST_SEQUENCE + 1);

        let error = decode_reply(&held_v4(), &reply).unwrap_err();
        assert!(
            matches!(error, DestroyError::UnexpectedReply { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn reply_truncated_is_invalid() {
        let reply = reply_with_code(0, REQUEST_SEQUENCE);

        let error = decode_reply(&held_v4(), &reply[..10]).unwrap_err();
        assert!(
            matches!(error, DestroyError::InvalidReply { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn error_message_names_socket() {
        let error = DestroyError::NotFound { socket: held_v4() };

        assert_eq!(
            error.to_string(),
            "tcp socket 10.1.2.3:40000 -> 192.0.2.7:443 (cookie 72623859790382856, pid 4242) not found"
        );
    }
}

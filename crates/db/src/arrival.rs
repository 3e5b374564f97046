//! When a command arrived: the kernel's receive time of the bytes that carried it
//! (SO_TIMESTAMPNS). Blocked clients are served in arrival order, as Redis does; a server
//! that reads its connections on several threads cannot tell that order from the order in
//! which it happens to read them (a thread may be preempted between its wake-up and its
//! read, and the runtime runs the last task it woke first).

use std::io;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// What one read takes at most (the request buffer grows by as much per read).
const READ_AT_MOST: usize = 16 * 1024;

/// Reads a connection, keeping when each read's bytes arrived.
pub struct StampedReader {
    scratch: Box<[u8]>,
    cmsg: Vec<u8>,
}

/// Nanoseconds since the epoch (the clock the kernel stamps with).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl StampedReader {
    pub fn new(s: &TcpStream) -> StampedReader {
        // Without stamps (an old kernel) every read counts as arriving when it is read.
        if let Err(e) = setsockopt(s, sockopt::ReceiveTimestampns, &true) {
            tracing::debug!(error = %e, "no receive timestamps on this connection");
        }
        StampedReader {
            scratch: vec![0u8; READ_AT_MOST].into_boxed_slice(),
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
        }
    }

    /// Appends what the socket holds to `buf`: how many bytes (0 at the end of the stream)
    /// and when the last of them arrived.
    pub async fn read(&mut self, s: &TcpStream, buf: &mut BytesMut) -> io::Result<(usize, u64)> {
        loop {
            s.readable().await?;
            match s.try_io(Interest::READABLE, || self.recv(s)) {
                Ok((n, at)) => {
                    buf.extend_from_slice(&self.scratch[..n]);
                    return Ok((n, at));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn recv(&mut self, s: &TcpStream) -> io::Result<(usize, u64)> {
        let mut iov = [IoSliceMut::new(&mut self.scratch)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut self.cmsg),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let mut at = None;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                at = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
            }
        }
        Ok((msg.bytes, at.unwrap_or_else(now_ns)))
    }
}

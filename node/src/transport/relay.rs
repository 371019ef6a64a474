//! An in-process UDP relay that can cut the path between two QUIC endpoints: for the QUIC
//! tests and the `outage` benchmark, which need a partition without network namespaces.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;

/// Forwards UDP between whoever sends to [`addr`](Self::addr) and one server, dropping every
/// packet in both directions while cut. Its forwarding tasks end with the runtime.
#[derive(Debug, Clone)]
pub struct CutRelay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl CutRelay {
    /// A relay on 127.0.0.1 to `server`, not cut.
    pub async fn bind(server: SocketAddr) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let back = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        back.connect(server).await?;
        let relay = Self {
            addr: front.local_addr()?,
            cut: Arc::default(),
        };
        let (sender_tx, mut sender_rx) = tokio::sync::watch::channel(None);
        let (front2, back2, cut) = (front.clone(), back.clone(), relay.cut.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front2.recv_from(&mut buf).await {
                sender_tx.send_replace(Some(from));
                if !cut.load(Ordering::SeqCst) {
                    let _ = back2.send(&buf[..n]).await;
                }
            }
        });
        let cut = relay.cut.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *sender_rx.borrow_and_update();
                if let (Some(to), false) = (to, cut.load(Ordering::SeqCst)) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        Ok(relay)
    }

    /// The address to send to instead of the server's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts (`true`) or heals (`false`) the path.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

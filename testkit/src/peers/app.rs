//! A tiny HTTP/1.1 upstream app for the mesh tests (the "httpbin" behind a sidecar): answers
//! every request with 200 and a small body after a fixed delay, with keep-alive. It stands in
//! for the workload; the proxies in front of it are real Envoys.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub struct App {
    pub addr: String,
    pub served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl App {
    /// Listens on `addr` (e.g. 127.0.10.3:8000); each response waits `delay`.
    pub fn start(addr: &str, delay: Duration) -> App {
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("binding the test app on {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (served.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let served = s2.clone();
                        std::thread::spawn(move || serve_conn(conn, delay, &served));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        App {
            addr: addr.to_string(),
            served,
            stop,
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_conn(conn: TcpStream, delay: Duration, served: &AtomicU64) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut writer = conn;
    loop {
        let mut content_length = 0usize;
        let mut first = String::new();
        match reader.read_line(&mut first) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        if content_length > 0 {
            let mut body = vec![0u8; content_length];
            if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                return;
            }
        }
        std::thread::sleep(delay);
        let body = b"{\"app\":\"httpbin\"}";
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut out = resp.into_bytes();
        out.extend_from_slice(body);
        if writer.write_all(&out).is_err() {
            return;
        }
        served.fetch_add(1, Ordering::Relaxed);
    }
}

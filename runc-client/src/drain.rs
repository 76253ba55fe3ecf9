//! Bounded draining of a child's output: read everything, keep only head and tail.

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Output retained from one stream: the first and last bytes, plus a count of what was dropped.
#[derive(Clone, Debug, Default)]
pub struct Retained {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    dropped: u64,
    total: u64,
}

impl Retained {
    /// Retain at most `limit` bytes: half from the start, the rest from the end.
    pub fn new(limit: usize) -> Self {
        let head_cap = limit / 2;
        Retained {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap,
            tail_cap: limit - head_cap,
            dropped: 0,
            total: 0,
        }
    }

    /// Account for more output.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < self.head_cap {
            let n = data.len().min(self.head_cap - self.head.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_cap {
            self.dropped += (self.tail.len() + data.len() - self.tail_cap) as u64;
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
            return;
        }
        let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.dropped += overflow as u64;
        self.tail.extend(data);
    }

    /// The first retained bytes.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The last retained bytes (after the head).
    pub fn tail(&self) -> Vec<u8> {
        self.tail.iter().copied().collect()
    }

    /// Bytes seen but not retained.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes seen in total.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether anything was dropped.
    pub fn is_truncated(&self) -> bool {
        self.dropped > 0
    }

    /// Head followed by tail; the complete output when nothing was dropped.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.head.len() + self.tail.len());
        v.extend_from_slice(&self.head);
        v.extend(self.tail.iter());
        v
    }

    /// Lossy text with a marker where bytes were dropped.
    pub fn to_string_lossy(&self) -> String {
        if !self.is_truncated() {
            return String::from_utf8_lossy(&self.to_vec()).into_owned();
        }
        format!(
            "{}\n[... {} bytes dropped ...]\n{}",
            String::from_utf8_lossy(&self.head),
            self.dropped,
            String::from_utf8_lossy(&self.tail())
        )
    }
}

/// Read `reader` to EOF into `into`; cancel-safe in that everything read so far stays in `into`.
pub async fn drain<R: AsyncRead + Unpin>(
    mut reader: R,
    into: &mut Retained,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        into.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn keeps_everything_under_the_limit() {
        let mut r = Retained::new(100);
        r.push(b"hello ");
        r.push(b"world");
        assert_eq!(r.to_vec(), b"hello world");
        assert!(!r.is_truncated());
        assert_eq!(r.total(), 11);
    }

    #[test]
    fn keeps_head_and_tail_in_any_chunking() {
        let data = pattern(10_000);
        for chunk in [1, 7, 50, 51, 333, 4096, 10_000] {
            let mut r = Retained::new(100);
            for c in data.chunks(chunk) {
                r.push(c);
            }
            assert_eq!(r.head(), &data[..50], "chunk {chunk}");
            assert_eq!(r.tail(), &data[data.len() - 50..], "chunk {chunk}");
            assert_eq!(r.dropped(), 10_000 - 100, "chunk {chunk}");
            assert_eq!(r.total(), 10_000);
        }
    }

    #[test]
    fn marks_truncation_in_text() {
        let mut r = Retained::new(4);
        r.push(b"abcdefgh");
        assert_eq!(r.to_string_lossy(), "ab\n[... 4 bytes dropped ...]\ngh");
    }

    #[tokio::test]
    async fn drains_to_eof() {
        let data = pattern(100_000);
        let mut r = Retained::new(1000);
        drain(&data[..], &mut r).await.unwrap();
        assert_eq!(r.total(), 100_000);
        assert_eq!(r.tail(), &data[data.len() - 500..]);
    }
}

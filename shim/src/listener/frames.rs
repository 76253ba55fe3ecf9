//! Where a connection's incoming bytes stand in ttrpc's framing.
//!
//! Every ttrpc frame is a 10-byte header (payload length: u32 big-endian, stream id:
//! u32 big-endian, type: u8, flags: u8) followed by the payload. The cursor takes the
//! header in (however it is split across reads), holds it until the frame is admitted,
//! hands it on, then counts the payload through. It never asks for more than the current
//! frame still needs, so one read never straddles two frames.

/// Bytes in a ttrpc frame header.
pub(crate) const HEADER_LEN: usize = 10;

/// Framing state of one connection's read side.
#[derive(Debug)]
pub(crate) struct Cursor {
    header: [u8; HEADER_LEN],
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a header; this many bytes of it are in.
    Header(usize),
    /// A whole header is in, waiting to be admitted.
    Admission,
    /// Handing the admitted header on; this many bytes of it went out.
    Handing(usize),
    /// Passing the payload through; this many bytes of it are still to come.
    Payload(usize),
}

impl Cursor {
    /// Between frames, nothing read yet.
    pub(crate) fn new() -> Self {
        Self {
            header: [0; HEADER_LEN],
            phase: Phase::Header(0),
        }
    }

    /// Whether some frame has begun and not yet fully passed.
    pub(crate) fn mid_frame(&self) -> bool {
        self.phase != Phase::Header(0)
    }

    /// Where the next header bytes go, while a header is being read.
    pub(crate) fn header_room(&mut self) -> Option<&mut [u8]> {
        match self.phase {
            Phase::Header(have) => Some(&mut self.header[have..]),
            _ => None,
        }
    }

    /// Records `n` header bytes read into [`Cursor::header_room`]; the announced payload
    /// length once the header is whole.
    pub(crate) fn header_read(&mut self, n: usize) -> Option<usize> {
        let Phase::Header(have) = self.phase else {
            return None;
        };
        let have = have + n;
        debug_assert!(have <= HEADER_LEN);
        if have < HEADER_LEN {
            self.phase = Phase::Header(have);
            return None;
        }
        self.phase = Phase::Admission;
        self.awaiting_admission()
    }

    /// The announced payload length of a whole header not yet admitted.
    pub(crate) fn awaiting_admission(&self) -> Option<usize> {
        (self.phase == Phase::Admission).then(|| self.announced())
    }

    /// Lets the waiting header on its way.
    pub(crate) fn admit(&mut self) {
        if self.phase == Phase::Admission {
            self.phase = Phase::Handing(0);
        }
    }

    /// Copies as much of the admitted header as fits into `out`; how much that was.
    /// Once the whole header is out the payload is next (or, if empty, the next frame).
    pub(crate) fn hand_on(&mut self, out: &mut [u8]) -> usize {
        let Phase::Handing(sent) = self.phase else {
            return 0;
        };
        let n = out.len().min(HEADER_LEN - sent);
        out[..n].copy_from_slice(&self.header[sent..sent + n]);
        self.phase = match (sent + n, self.announced()) {
            (HEADER_LEN, 0) => Phase::Header(0),
            (HEADER_LEN, len) => Phase::Payload(len),
            (sent, _) => Phase::Handing(sent),
        };
        n
    }

    /// Payload bytes the current frame still expects (0 outside a payload).
    pub(crate) fn payload_left(&self) -> usize {
        match self.phase {
            Phase::Payload(left) => left,
            _ => 0,
        }
    }

    /// Records `n` payload bytes passed on; true when that ended the frame.
    pub(crate) fn payload_read(&mut self, n: usize) -> bool {
        let Phase::Payload(left) = self.phase else {
            return false;
        };
        debug_assert!(n <= left);
        let left = left - n.min(left);
        self.phase = if left == 0 {
            Phase::Header(0)
        } else {
            Phase::Payload(left)
        };
        left == 0
    }

    /// The current (or last) frame's header.
    pub(crate) fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    fn announced(&self) -> usize {
        let len = [
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ];
        u32::from_be_bytes(len) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header announcing `len` bytes on stream `id`.
    fn header(len: u32, id: u32) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&len.to_be_bytes());
        h[4..8].copy_from_slice(&id.to_be_bytes());
        h[8] = 1;
        h
    }

    fn feed_header(c: &mut Cursor, bytes: &[u8]) -> Option<usize> {
        let room = c.header_room().expect("reading a header");
        assert!(bytes.len() <= room.len(), "asked for more than the header");
        room[..bytes.len()].copy_from_slice(bytes);
        c.header_read(bytes.len())
    }

    #[test]
    fn header_split_across_reads() {
        let h = header(300, 7);
        let mut c = Cursor::new();
        assert!(!c.mid_frame());
        assert_eq!(feed_header(&mut c, &h[..1]), None);
        assert!(c.mid_frame(), "one byte starts a frame");
        assert_eq!(
            c.header_room().unwrap().len(),
            9,
            "never asks past the header"
        );
        assert_eq!(feed_header(&mut c, &h[1..6]), None);
        assert_eq!(feed_header(&mut c, &h[6..]), Some(300));
        assert_eq!(c.awaiting_admission(), Some(300));
        assert!(c.header_room().is_none());
        let mut out = [0u8; 4];
        assert_eq!(c.hand_on(&mut out), 0, "nothing goes out before admission");
        c.admit();
        // Handed on in pieces too, byte for byte.
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = c.hand_on(&mut out);
            got.extend_from_slice(&out[..n]);
        }
        assert_eq!(got, h);
        assert_eq!(c.payload_left(), 300);
    }

    #[test]
    fn payload_is_counted_to_the_frame_end() {
        let mut c = Cursor::new();
        assert_eq!(feed_header(&mut c, &header(5, 1)), Some(5));
        c.admit();
        assert_eq!(c.hand_on(&mut [0u8; 64]), HEADER_LEN);
        assert!(!c.payload_read(2));
        assert_eq!(c.payload_left(), 3);
        assert!(c.payload_read(3), "frame ends");
        assert!(!c.mid_frame());
        assert_eq!(c.payload_left(), 0);
        assert_eq!(c.header_room().unwrap().len(), HEADER_LEN);
    }

    #[test]
    fn back_to_back_frames_and_empty_payloads() {
        let mut c = Cursor::new();
        // An empty frame ends with its header.
        assert_eq!(feed_header(&mut c, &header(0, 1)), Some(0));
        c.admit();
        assert_eq!(c.hand_on(&mut [0u8; HEADER_LEN]), HEADER_LEN);
        assert!(!c.mid_frame());
        assert_eq!(feed_header(&mut c, &header(2, 3)), Some(2));
        c.admit();
        c.hand_on(&mut [0u8; HEADER_LEN]);
        assert!(c.payload_read(2));
        assert_eq!(feed_header(&mut c, &header(1, 5)), Some(1));
    }
}

//! The byte pipeline every backup file goes through, both ways:
//!
//! ```text
//! write: source -> zstd -> [XChaCha20-Poly1305 STREAM] -> SHA-256 + count -> file
//! read:  file -> SHA-256 + count -> [decrypt] -> zstd -> sink
//! ```
//!
//! The hash and size are of the stored bytes, so `verify` needs no key.
//! Blocking I/O: run it on a blocking thread. Touches only the files it is given.

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// Plaintext bytes per encrypted chunk.
const CHUNK: usize = 64 * 1024;
/// Starts every encrypted file; then a 19-byte nonce prefix, then chunks
/// `[u32 BE length, top bit = last][ciphertext + tag]`.
const MAGIC: &[u8; 8] = b"ADBKENC1";
const NONCE_PREFIX: usize = 19;
const LAST: u32 = 1 << 31;

/// A 32-byte encryption key.
#[derive(Clone)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Counts and hashes what passes through to `inner`.
pub struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// `(sha256 hex, bytes, inner)`.
    pub fn finish(self) -> (String, u64, W) {
        (hex::encode(self.hasher.finalize()), self.bytes, self.inner)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts and hashes what is read from `inner`.
pub struct HashReader<R: Read> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// `(sha256 hex, bytes)` of everything read so far.
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Encrypts in 64 KiB chunks (the STREAM construction: a truncated,
/// reordered or altered file fails to decrypt).
pub struct Encrypt<W: Write> {
    inner: W,
    enc: Option<EncryptorBE32<XChaCha20Poly1305>>,
    buf: Vec<u8>,
}

impl<W: Write> Encrypt<W> {
    pub fn new(mut inner: W, key: &Key) -> io::Result<Self> {
        let nonce: [u8; NONCE_PREFIX] = rand::random();
        inner.write_all(MAGIC)?;
        inner.write_all(&nonce)?;
        let aead = XChaCha20Poly1305::new((&key.0).into());
        Ok(Encrypt {
            inner,
            enc: Some(EncryptorBE32::from_aead(aead, (&nonce).into())),
            buf: Vec::with_capacity(CHUNK),
        })
    }

    fn frame(&mut self, ct: &[u8], last: bool) -> io::Result<()> {
        let len = ct.len() as u32 | if last { LAST } else { 0 };
        self.inner.write_all(&len.to_be_bytes())?;
        self.inner.write_all(ct)
    }

    pub fn finish(mut self) -> io::Result<W> {
        let enc = self
            .enc
            .take()
            .ok_or_else(|| io::Error::other("finished twice"))?;
        let ct = enc
            .encrypt_last(self.buf.as_slice())
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.frame(&ct, true)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Encrypt<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            let enc = self
                .enc
                .as_mut()
                .ok_or_else(|| io::Error::other("finished"))?;
            let ct = enc
                .encrypt_next(self.buf.as_slice())
                .map_err(|_| io::Error::other("encryption failed"))?;
            self.buf.clear();
            self.frame(&ct, false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads what [`Encrypt`] wrote. A wrong key, a flipped bit or a cut file is
/// an `InvalidData` error, never wrong plaintext.
pub struct Decrypt<R: Read> {
    inner: R,
    dec: Option<DecryptorBE32<XChaCha20Poly1305>>,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl<R: Read> Decrypt<R> {
    pub fn new(mut inner: R, key: &Key) -> io::Result<Self> {
        let mut head = [0u8; 8 + NONCE_PREFIX];
        inner
            .read_exact(&mut head)
            .map_err(|_| bad("not an encrypted backup file (too short)"))?;
        if &head[..8] != MAGIC {
            return Err(bad("not an encrypted backup file (bad magic)"));
        }
        let nonce: [u8; NONCE_PREFIX] = head[8..].try_into().expect("19 bytes");
        let aead = XChaCha20Poly1305::new((&key.0).into());
        Ok(Decrypt {
            inner,
            dec: Some(DecryptorBE32::from_aead(aead, (&nonce).into())),
            plain: Vec::new(),
            pos: 0,
            done: false,
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let mut len = [0u8; 4];
        self.inner
            .read_exact(&mut len)
            .map_err(|_| bad("encrypted backup file is truncated"))?;
        let len = u32::from_be_bytes(len);
        let last = len & LAST != 0;
        let n = (len & !LAST) as usize;
        if n > CHUNK + 16 {
            return Err(bad("encrypted backup file is corrupt (chunk too long)"));
        }
        let mut ct = vec![0u8; n];
        self.inner
            .read_exact(&mut ct)
            .map_err(|_| bad("encrypted backup file is truncated"))?;
        let fail = |_| bad("decryption failed: wrong key, or the file is corrupt");
        self.plain = if last {
            self.done = true;
            let dec = self.dec.take().ok_or_else(|| bad("read past the end"))?;
            dec.decrypt_last(ct.as_slice()).map_err(fail)?
        } else {
            let dec = self.dec.as_mut().ok_or_else(|| bad("read past the end"))?;
            dec.decrypt_next(ct.as_slice()).map_err(fail)?
        };
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Read for Decrypt<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The stored side of a file being written: plain or encrypted, then hashed.
pub enum Stored<W: Write> {
    Plain(HashWriter<W>),
    Encrypted(Encrypt<HashWriter<W>>),
}

impl<W: Write> Stored<W> {
    pub fn new(inner: W, key: Option<&Key>) -> io::Result<Self> {
        Ok(match key {
            Some(k) => Stored::Encrypted(Encrypt::new(HashWriter::new(inner), k)?),
            None => Stored::Plain(HashWriter::new(inner)),
        })
    }
    /// `(sha256 hex, stored bytes, inner)`.
    pub fn finish(self) -> io::Result<(String, u64, W)> {
        Ok(match self {
            Stored::Plain(h) => h.finish(),
            Stored::Encrypted(e) => e.finish()?.finish(),
        })
    }
}

impl<W: Write> Write for Stored<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stored::Plain(h) => h.write(buf),
            Stored::Encrypted(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stored::Plain(h) => h.flush(),
            Stored::Encrypted(e) => e.flush(),
        }
    }
}

/// A file being written: `zstd(level) -> Stored`.
pub struct Writer<W: Write> {
    zstd: zstd::Encoder<'static, Stored<W>>,
    raw: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(inner: W, level: i32, key: Option<&Key>) -> io::Result<Self> {
        let zstd = zstd::Encoder::new(Stored::new(inner, key)?, level)?;
        Ok(Writer { zstd, raw: 0 })
    }
    /// `(sha256 hex, stored bytes, raw bytes, inner)`.
    pub fn finish(self) -> io::Result<(String, u64, u64, W)> {
        let (sha, stored, inner) = self.zstd.finish()?.finish()?;
        Ok((sha, stored, self.raw, inner))
    }
}

impl<W: Write> Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.zstd.write(buf)?;
        self.raw += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.zstd.flush()
    }
}

/// The plaintext of a stored file: `[decrypt] -> zstd decode`.
pub fn reader<'a, R: Read + 'a>(inner: R, key: Option<&Key>) -> io::Result<Box<dyn Read + 'a>> {
    let inner: Box<dyn Read + 'a> = match key {
        Some(k) => Box::new(Decrypt::new(inner, k)?),
        None => Box::new(inner),
    };
    Ok(Box::new(zstd::Decoder::new(inner)?))
}

/// `(sha256 hex, bytes)` of a whole file.
pub fn hash_file(path: &std::path::Path) -> io::Result<(String, u64)> {
    let mut r = HashReader::new(std::fs::File::open(path)?);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(key: Option<&Key>, data: &[u8]) -> (Vec<u8>, String, u64) {
        let mut w = Writer::new(Vec::new(), 3, key).unwrap();
        w.write_all(data).unwrap();
        let (sha, stored, raw, bytes) = w.finish().unwrap();
        assert_eq!(raw, data.len() as u64);
        assert_eq!(stored, bytes.len() as u64);
        assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
        (bytes, sha, stored)
    }

    #[test]
    fn plain_and_encrypted_files_read_back_to_the_same_bytes() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let key = Key([7; 32]);
        for k in [None, Some(&key)] {
            let (bytes, _, _) = roundtrip(k, &data);
            let mut out = Vec::new();
            reader(bytes.as_slice(), k)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn a_flipped_bit_truncation_or_wrong_key_fails_to_decrypt() {
        let data = vec![42u8; 200_000];
        let key = Key([1; 32]);
        let (bytes, _, _) = roundtrip(Some(&key), &data);
        let read_all = |b: &[u8], k: &Key| -> io::Result<Vec<u8>> {
            let mut out = Vec::new();
            reader(b, Some(k))?.read_to_end(&mut out)?;
            Ok(out)
        };
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert!(read_all(&flipped, &key).is_err());
        assert!(read_all(&bytes[..bytes.len() - 10], &key).is_err());
        assert!(read_all(&bytes, &Key([2; 32])).is_err());
        assert_eq!(read_all(&bytes, &key).unwrap(), data);
    }
}

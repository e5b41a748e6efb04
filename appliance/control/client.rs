//! The CLI side of the control socket: blocking, one request per connection.

use super::{Reply, Request};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach applianced at {path}: {source}. Is it running? Start it with `applianced run`, or pass --data-dir/--socket"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("applianced sent a malformed reply: {0}")]
    Malformed(String),
}

pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connect and send `req`.
    pub fn request(socket: &Path, req: &Request) -> Result<Client, ClientError> {
        let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
        let mut line =
            serde_json::to_vec(req).map_err(|e| ClientError::Malformed(e.to_string()))?;
        line.push(b'\n');
        s.write_all(&line)?;
        Ok(Client {
            reader: BufReader::new(s),
        })
    }

    /// The next reply, or `None` once the daemon closes the connection.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| ClientError::Malformed(format!("{e}: {}", line.trim())))
    }

    /// Send `req` and return its single reply.
    pub fn call(socket: &Path, req: &Request) -> Result<Reply, ClientError> {
        Client::request(socket, req)?
            .next_reply()?
            .ok_or_else(|| ClientError::Malformed("connection closed without a reply".into()))
    }
}

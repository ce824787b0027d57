//! `nuwa serve` as a process: SIGTERM during a streamed answer lets that stream finish, then the
//! process exits 0.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn fixture() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llava-1.5")
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_the_stream_in_flight_then_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nuwa"))
        .args(["serve", "--model", fixture().to_str().unwrap(), "--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the server exited before listening");
        if let Some(url) = line.trim().split("http://").nth(1) {
            break url.to_owned();
        }
    };
    let body = r#"{"messages":[{"role":"user","content":"Tell me everything"}],"max_tokens":600,"stream":true,"pruning":{"method":"none"}}"#;
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Wait for the first content chunk, then ask the server to stop.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"")
        || String::from_utf8_lossy(&seen).matches("data: ").count() < 3
    {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    conn.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("\"finish_reason\":\"length\""), "the stream was cut: {text}");
    assert!(text.contains("data: [DONE]"), "{text}");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

//! The worker protocol's framing: a read stopped halfway through a frame (the mesh taking
//! its agent for crashed meanwhile, a timeout) loses nothing, and frames sent back to back
//! are read one by one.

use super::*;

#[tokio::test]
async fn a_frame_read_halfway_and_stopped_is_read_whole_later() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let frame = |body: &[u8]| {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let first = frame(br#"{"op":"heartbeat"}"#);
    let second = frame(br#"{"op":"claim","wait_ms":0}"#);
    let mut buf = Vec::new();
    // Half of the first frame, then the read is stopped (as a select or a timeout does).
    a.write_all(&first[..7]).await.unwrap();
    let stopped =
        tokio::time::timeout(Duration::from_millis(50), read_frame(&mut b, &mut buf)).await;
    assert!(stopped.is_err(), "no whole frame yet");
    // The rest, and the second right behind it.
    a.write_all(&first[7..]).await.unwrap();
    a.write_all(&second).await.unwrap();
    let got = read_frame(&mut b, &mut buf).await.unwrap().unwrap();
    assert_eq!(got, &first[4..]);
    let got = read_frame(&mut b, &mut buf).await.unwrap().unwrap();
    assert_eq!(got, &second[4..]);
    // A frame of a size the protocol refuses; the end of the connection.
    a.write_all(&0u32.to_be_bytes()).await.unwrap();
    assert!(read_frame(&mut b, &mut buf).await.is_err());
    drop(a);
    let mut rest = Vec::new();
    assert_eq!(read_frame(&mut b, &mut rest).await.unwrap(), None);
}

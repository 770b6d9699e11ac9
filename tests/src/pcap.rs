//! Just enough of the classic pcap format to write test captures and read DPDK's output.

use std::fs;
use std::path::Path;

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;

/// Writes `packets` as an Ethernet capture (microsecond timestamps).
pub fn write(path: &Path, packets: &[Vec<u8>]) {
    // Header: magic, version 2.4, thiszone, sigfigs, snaplen, linktype 1 (Ethernet).
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC_US.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, p) in packets.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    fs::write(path, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Reads every packet of a little-endian capture (micro- or nanosecond timestamps).
pub fn read(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if data.len() < 24 {
        return Err(format!("{}: {} bytes, no pcap header", path.display(), data.len()));
    }
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    if magic != MAGIC_US && magic != MAGIC_NS {
        return Err(format!("{}: not a little-endian pcap file (magic {magic:#x})", path.display()));
    }
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        if at + caplen > data.len() {
            return Err(format!("{}: truncated record", path.display()));
        }
        packets.push(data[at..at + caplen].to_vec());
        at += caplen;
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("pcap-rt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pcap");
        let packets = vec![vec![1u8; 60], (0..9000).map(|i| i as u8).collect()];
        write(&path, &packets);
        assert_eq!(read(&path).unwrap(), packets);
        fs::remove_dir_all(&dir).unwrap();
    }
}

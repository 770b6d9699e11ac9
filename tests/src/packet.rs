//! Test packets built by hand, and checks of what came back: Ethernet, IPv4, UDP/TCP
//! with their checksums computed here, independently of the code under test.

pub const SRC_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
pub const DST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];

/// Internet checksum (RFC 1071) of `data`, complemented.
pub fn cksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        sum += (pair[0] as u32) << 8 | pair.get(1).copied().unwrap_or(0) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + UDP with `payload` bytes (numbered by `seq`), both checksums right.
pub fn udp4(dst_ip: [u8; 4], payload: usize, seq: u16, ttl: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 8 + payload;
    let src_ip = [192, 0, 2, 1];
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, (seq >> 8) as u8, seq as u8, 0, 0, ttl, 17, 0, 0];
    ip.extend_from_slice(&src_ip);
    ip.extend_from_slice(&dst_ip);
    let c = cksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let ulen = 8 + payload;
    let mut udp = vec![0x30, 0x39, 0x00, 0x09, (ulen >> 8) as u8, ulen as u8, 0, 0];
    udp.extend((0..payload).map(|i| (i as u16).wrapping_add(seq) as u8));
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src_ip);
    pseudo.extend_from_slice(&dst_ip);
    pseudo.extend_from_slice(&[0, 17, (ulen >> 8) as u8, ulen as u8]);
    pseudo.extend_from_slice(&udp);
    let c = cksum(&pseudo);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

/// Whether the IPv4 header of an Ethernet frame has a right checksum.
pub fn ip_cksum_ok(frame: &[u8]) -> bool {
    let ihl = (frame[14] & 0x0f) as usize * 4;
    cksum(&frame[14..14 + ihl]) == 0
}

/// Whether the TCP or UDP checksum of an unfragmented IPv4 frame is right.
pub fn l4_cksum_ok(frame: &[u8]) -> bool {
    let ihl = (frame[14] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let l4 = &frame[14 + ihl..14 + total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&frame[26..34]);
    pseudo.extend_from_slice(&[0, frame[23], (l4.len() >> 8) as u8, l4.len() as u8]);
    pseudo.extend_from_slice(l4);
    cksum(&pseudo) == 0
}

/// Ethernet + IPv4 + TCP (a bare ACK segment with `payload` bytes), both checksums right.
pub fn tcp4(dst_ip: [u8; 4], payload: usize, seq: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 20 + payload;
    let src_ip = [192, 0, 2, 1];
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, (seq >> 8) as u8, seq as u8, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src_ip);
    ip.extend_from_slice(&dst_ip);
    let c = cksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = vec![0x30, 0x39, 0x00, 0x50, 0, 0, (seq >> 8) as u8, seq as u8, 0, 0, 0, 1, 0x50, 0x10, 0x20, 0x00, 0, 0, 0, 0];
    tcp.extend((0..payload).map(|i| (i as u16).wrapping_mul(3).wrapping_add(seq) as u8));
    let l4 = tcp.len();
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src_ip);
    pseudo.extend_from_slice(&dst_ip);
    pseudo.extend_from_slice(&[0, 6, (l4 >> 8) as u8, l4 as u8]);
    pseudo.extend_from_slice(&tcp);
    let c = cksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

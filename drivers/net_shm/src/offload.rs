//! Checksum and VLAN offloads, done in software by this driver: the proxy's NIC is not
//! asked for them (the proxy never acts on a guest's metadata beyond what its own checks
//! allow, and a NIC queue shared by guests cannot be reconfigured for one of them).
//!
//! rx (only when the application enabled the offload on the port or queue): the IPv4
//! header checksum and the TCP/UDP checksum (over IPv4 or IPv6 without extension
//! headers) are verified and reported GOOD or BAD in `ol_flags`; whatever is not checked
//! (not IP, a fragment, a packet whose L4 part spans segments, UDP without checksum)
//! stays UNKNOWN, as DPDK allows. A VLAN tag is stripped into `vlan_tci`.
//!
//! tx (per packet, as the application asks with `RTE_MBUF_F_TX_*`): the IPv4 header
//! checksum and the TCP/UDP checksum are computed and written into the packet, then a
//! VLAN tag is inserted, before the packet is handed to the proxy.
//!
//! Packet data lies in the shared region: it is read by copies into a local buffer and
//! written through raw pointers, never through a Rust reference.

use dpdk_sys as sys;

const ETHER_TYPE_VLAN: u16 = 0x8100;
const ETHER_TYPE_QINQ: u16 = 0x88a8;
const ETHER_TYPE_IPV4: u16 = 0x0800;
const ETHER_TYPE_IPV6: u16 = 0x86dd;
const ETHER_HDR_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
/// The two MAC addresses at the start of a frame (what moves when a tag comes or goes).
const MAC_ADDRS_LEN: usize = 12;
const IPV6_HDR_LEN: usize = 40;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// Where the checksum field lies in each L4 header, and the least header holding it.
const TCP_CKSUM_AT: usize = 16;
const UDP_CKSUM_AT: usize = 6;
/// Bytes of a frame copied for parsing: Ethernet, two VLAN tags, the largest IPv4 header.
const HEADER_COPY: usize = ETHER_HDR_LEN + 2 * VLAN_TAG_LEN + 60;

/// The rx offloads this driver does.
pub const RX_OFFLOAD_CAPA: u64 = (sys::RTE_ETH_RX_OFFLOAD_IPV4_CKSUM
    | sys::RTE_ETH_RX_OFFLOAD_UDP_CKSUM
    | sys::RTE_ETH_RX_OFFLOAD_TCP_CKSUM
    | sys::RTE_ETH_RX_OFFLOAD_VLAN_STRIP) as u64;
/// The rx offloads that make [`rx_offload`] verify checksums.
const RX_CKSUM: u64 =
    (sys::RTE_ETH_RX_OFFLOAD_IPV4_CKSUM | sys::RTE_ETH_RX_OFFLOAD_UDP_CKSUM | sys::RTE_ETH_RX_OFFLOAD_TCP_CKSUM) as u64;
/// The tx offloads this driver does.
pub const TX_OFFLOAD_CAPA: u64 = (sys::RTE_ETH_TX_OFFLOAD_IPV4_CKSUM
    | sys::RTE_ETH_TX_OFFLOAD_UDP_CKSUM
    | sys::RTE_ETH_TX_OFFLOAD_TCP_CKSUM
    | sys::RTE_ETH_TX_OFFLOAD_VLAN_INSERT) as u64;
/// The mbuf flags that ask for work in [`tx_offload`].
pub const TX_FLAGS: u64 = sys::RTE_MBUF_F_TX_IP_CKSUM | sys::RTE_MBUF_F_TX_L4_MASK | sys::RTE_MBUF_F_TX_VLAN;

/// A running Internet checksum (RFC 1071): a one's-complement sum of 16-bit big-endian
/// words over bytes given in pieces of any length.
#[derive(Clone, Copy, Default)]
pub struct Sum {
    acc: u64,
    /// The previous piece ended in the middle of a 16-bit word.
    odd: bool,
}

impl Sum {
    pub fn add(&mut self, bytes: &[u8]) {
        let mut bytes = bytes;
        if self.odd {
            if let Some((&b, rest)) = bytes.split_first() {
                self.acc += b as u64;
                self.odd = false;
                bytes = rest;
            }
        }
        let mut words = bytes.chunks_exact(2);
        for w in &mut words {
            self.acc += u16::from_be_bytes([w[0], w[1]]) as u64;
        }
        if let [b] = words.remainder() {
            self.acc += (*b as u64) << 8;
            self.odd = true;
        }
    }

    /// Adds `len` bytes at `data`, copied through a local buffer.
    ///
    /// # Safety
    /// `data..data + len` is readable.
    pub unsafe fn add_raw(&mut self, data: *const u8, len: usize) {
        let mut buf = [0u8; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len());
            // SAFETY: within the caller's readable range; `buf` has room for n bytes.
            unsafe { std::ptr::copy_nonoverlapping(data.add(done), buf.as_mut_ptr(), n) };
            self.add(&buf[..n]);
            done += n;
        }
    }

    /// The folded 16-bit sum (not complemented).
    pub fn fold(self) -> u16 {
        let mut s = self.acc;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The network layer of a frame, as far as the offloads need it.
#[derive(Debug, PartialEq, Eq)]
enum L3 {
    Ipv4 { l2_len: usize, ihl: usize, total_len: usize, fragment: bool, proto: u8 },
    Ipv6 { l2_len: usize, payload_len: usize, next: u8 },
    Other,
}

/// Parses Ethernet (up to two VLAN tags) and the IP header in `hdr`, the first bytes of
/// a frame.
fn parse(hdr: &[u8]) -> L3 {
    let mut at = MAC_ADDRS_LEN;
    let mut ether_type = be16(hdr, at);
    for _ in 0..2 {
        if matches!(ether_type, Some(ETHER_TYPE_VLAN | ETHER_TYPE_QINQ)) {
            at += VLAN_TAG_LEN;
            ether_type = be16(hdr, at);
        }
    }
    let l2_len = at + 2;
    match ether_type {
        Some(ETHER_TYPE_IPV4) => {
            let Some(&vihl) = hdr.get(l2_len) else { return L3::Other };
            let ihl = (vihl & 0x0f) as usize * 4;
            if vihl >> 4 != 4 || ihl < 20 || hdr.len() < l2_len + ihl {
                return L3::Other;
            }
            let ip = &hdr[l2_len..];
            let total_len = be16(ip, 2).unwrap_or(0) as usize;
            let frag = be16(ip, 6).unwrap_or(0);
            // More fragments, or an offset: the L4 header or its data is elsewhere.
            let fragment = frag & 0x3fff != 0;
            L3::Ipv4 { l2_len, ihl, total_len, fragment, proto: ip[9] }
        }
        Some(ETHER_TYPE_IPV6) if hdr.len() >= l2_len + IPV6_HDR_LEN && hdr[l2_len] >> 4 == 6 => {
            let ip = &hdr[l2_len..];
            L3::Ipv6 { l2_len, payload_len: be16(ip, 4).unwrap_or(0) as usize, next: ip[6] }
        }
        _ => L3::Other,
    }
}

/// The pseudo-header's sum for an L4 checksum (RFC 768, RFC 793, RFC 8200 8.1).
fn pseudo_header(ip: &[u8], v6: bool, proto: u8, l4_len: usize) -> Sum {
    let mut sum = Sum::default();
    if v6 {
        sum.add(&ip[8..40]);
        sum.add(&(l4_len as u32).to_be_bytes());
        sum.add(&[0, 0, 0, proto]);
    } else {
        sum.add(&ip[12..20]);
        sum.add(&[0, proto]);
        sum.add(&(l4_len as u16).to_be_bytes());
    }
    sum
}

/// `ol_flags` for the checksums of a received packet: its first segment is `seg_len`
/// bytes at `data`, the whole packet `pkt_len` bytes.
///
/// # Safety
/// `data..data + seg_len` is readable.
pub unsafe fn rx_cksum_flags(data: *const u8, seg_len: usize, pkt_len: usize) -> u64 {
    let mut hdr = [0u8; HEADER_COPY];
    let n = seg_len.min(HEADER_COPY);
    // SAFETY: n <= seg_len bytes, readable per the caller.
    unsafe { std::ptr::copy_nonoverlapping(data, hdr.as_mut_ptr(), n) };
    let hdr = &hdr[..n];
    let (ip_at, v6, proto, l4_len, mut flags) = match parse(hdr) {
        L3::Ipv4 { l2_len, ihl, total_len, fragment, proto } => {
            let mut sum = Sum::default();
            sum.add(&hdr[l2_len..l2_len + ihl]);
            let ip_flag = if sum.fold() == 0xffff { sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD } else { sys::RTE_MBUF_F_RX_IP_CKSUM_BAD };
            if fragment || total_len < ihl {
                return ip_flag as u64;
            }
            (l2_len, false, proto, total_len - ihl, ip_flag as u64)
        }
        L3::Ipv6 { l2_len, payload_len, next } => (l2_len, true, next, payload_len, 0),
        L3::Other => return 0,
    };
    let ip_len = if v6 { IPV6_HDR_LEN } else { (hdr[ip_at] & 0x0f) as usize * 4 };
    let l4_at = ip_at + ip_len;
    // The whole L4 part must be in this one segment, which the packet must fill.
    if !matches!(proto, PROTO_TCP | PROTO_UDP) || seg_len != pkt_len || l4_at + l4_len > seg_len {
        return flags;
    }
    let cksum_at = l4_at + if proto == PROTO_TCP { TCP_CKSUM_AT } else { UDP_CKSUM_AT };
    if cksum_at + 2 > l4_at + l4_len {
        return flags | sys::RTE_MBUF_F_RX_L4_CKSUM_BAD as u64;
    }
    if proto == PROTO_UDP && !v6 && cksum_at + 2 <= n && be16(hdr, cksum_at) == Some(0) {
        // An IPv4 UDP datagram without checksum: nothing to verify.
        return flags;
    }
    let mut sum = pseudo_header(&hdr[ip_at..], v6, proto, l4_len);
    // SAFETY: l4_at + l4_len <= seg_len (checked above).
    unsafe { sum.add_raw(data.add(l4_at), l4_len) };
    flags |= if sum.fold() == 0xffff { sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD } else { sys::RTE_MBUF_F_RX_L4_CKSUM_BAD } as u64;
    flags
}

/// Strips a VLAN tag from the front of a received one-segment-or-more packet whose
/// first segment is `m`: returns the tag control information if there was a tag.
///
/// # Safety
/// `m` is a valid mbuf owned by the caller, its data in its buffer.
pub unsafe fn rx_vlan_strip(m: *mut sys::rte_mbuf) -> Option<u16> {
    // SAFETY: a valid mbuf (caller's contract); its data lies in its buffer.
    unsafe {
        let data = ((*m).buf_addr as *mut u8).add((*m).data_off as usize);
        if ((*m).data_len as usize) < ETHER_HDR_LEN + VLAN_TAG_LEN {
            return None;
        }
        let mut tag = [0u8; 4];
        std::ptr::copy_nonoverlapping(data.add(MAC_ADDRS_LEN), tag.as_mut_ptr(), 4);
        if u16::from_be_bytes([tag[0], tag[1]]) != ETHER_TYPE_VLAN {
            return None;
        }
        // The MAC addresses move over the tag.
        std::ptr::copy(data, data.add(VLAN_TAG_LEN), MAC_ADDRS_LEN);
        (*m).data_off += VLAN_TAG_LEN as u16;
        (*m).data_len -= VLAN_TAG_LEN as u16;
        (*m).pkt_len -= VLAN_TAG_LEN as u32;
        Some(u16::from_be_bytes([tag[2], tag[3]]))
    }
}

/// Why a packet's offload request could not be done.
#[derive(Debug, PartialEq, Eq)]
pub enum TxOffloadError {
    /// The headers the request names are not all in the first segment.
    HeadersSplit,
    /// No headroom for the VLAN tag.
    NoHeadroom,
}

/// Does what the packet's `RTE_MBUF_F_TX_*` flags ask for (see [`TX_FLAGS`]) and clears
/// those flags. `l2_len`/`l3_len` come from the mbuf (DPDK's convention for checksum
/// offloads); the checksum field's old content (the pseudo-header sum DPDK applications
/// put there for hardware) is ignored.
///
/// # Safety
/// `m` is a valid packet owned by the caller (not shared, direct), whose data nobody
/// else reads or writes meanwhile.
pub unsafe fn tx_offload(m: *mut sys::rte_mbuf) -> Result<(), TxOffloadError> {
    // SAFETY: per the caller's contract; tx_offload is a plain u64 of the mbuf.
    unsafe {
        let ol = (*m).ol_flags;
        if ol & (sys::RTE_MBUF_F_TX_IP_CKSUM | sys::RTE_MBUF_F_TX_L4_MASK) != 0 {
            let lens = (*m).__bindgen_anon_3.tx_offload;
            // DPDK's layout of tx_offload: l2_len 7 bits, then l3_len 9 bits.
            let l2_len = (lens & 0x7f) as usize;
            let l3_len = ((lens >> 7) & 0x1ff) as usize;
            tx_cksum(m, ol, l2_len, l3_len)?;
            (*m).ol_flags &= !(sys::RTE_MBUF_F_TX_IP_CKSUM | sys::RTE_MBUF_F_TX_L4_MASK);
        }
        if ol & sys::RTE_MBUF_F_TX_VLAN != 0 {
            if ((*m).data_off as usize) < VLAN_TAG_LEN || ((*m).data_len as usize) < MAC_ADDRS_LEN {
                return Err(TxOffloadError::NoHeadroom);
            }
            let data = ((*m).buf_addr as *mut u8).add((*m).data_off as usize);
            let front = data.sub(VLAN_TAG_LEN);
            std::ptr::copy(data, front, MAC_ADDRS_LEN);
            let mut tag = [0u8; 4];
            tag[..2].copy_from_slice(&ETHER_TYPE_VLAN.to_be_bytes());
            tag[2..].copy_from_slice(&(*m).vlan_tci.to_be_bytes());
            std::ptr::copy_nonoverlapping(tag.as_ptr(), front.add(MAC_ADDRS_LEN), 4);
            (*m).data_off -= VLAN_TAG_LEN as u16;
            (*m).data_len += VLAN_TAG_LEN as u16;
            (*m).pkt_len += VLAN_TAG_LEN as u32;
            (*m).ol_flags &= !sys::RTE_MBUF_F_TX_VLAN;
        }
    }
    Ok(())
}

/// # Safety
/// As for [`tx_offload`].
unsafe fn tx_cksum(m: *mut sys::rte_mbuf, ol: u64, l2_len: usize, l3_len: usize) -> Result<(), TxOffloadError> {
    // SAFETY: per the caller's contract: the packet and its segments are ours.
    unsafe {
        let data = ((*m).buf_addr as *mut u8).add((*m).data_off as usize);
        let seg_len = (*m).data_len as usize;
        let l4 = ol & sys::RTE_MBUF_F_TX_L4_MASK;
        let cksum_at = match l4 {
            0 => None,
            sys::RTE_MBUF_F_TX_TCP_CKSUM => Some(TCP_CKSUM_AT),
            sys::RTE_MBUF_F_TX_UDP_CKSUM => Some(UDP_CKSUM_AT),
            // SCTP's CRC is not offered (not in TX_OFFLOAD_CAPA): left as it is.
            _ => None,
        };
        let need = l2_len + l3_len + cksum_at.map_or(0, |at| at + 2);
        if !(20..=HEADER_COPY).contains(&l3_len) || need > seg_len {
            return Err(TxOffloadError::HeadersSplit);
        }
        let ip = data.add(l2_len);
        let mut hdr = [0u8; HEADER_COPY];
        std::ptr::copy_nonoverlapping(ip, hdr.as_mut_ptr(), l3_len);
        let hdr = &mut hdr[..l3_len];
        let v6 = hdr[0] >> 4 == 6;
        if !v6 && ol & sys::RTE_MBUF_F_TX_IP_CKSUM != 0 {
            hdr[10] = 0;
            hdr[11] = 0;
            let mut sum = Sum::default();
            sum.add(hdr);
            let cksum = (!sum.fold()).to_be_bytes();
            hdr[10..12].copy_from_slice(&cksum);
            std::ptr::copy_nonoverlapping(cksum.as_ptr(), ip.add(10), 2);
        }
        let Some(cksum_at) = cksum_at else { return Ok(()) };
        if v6 && l3_len < IPV6_HDR_LEN {
            return Err(TxOffloadError::HeadersSplit);
        }
        // The L4 length from the IP header (the frame may carry padding after it).
        let l4_len = if v6 {
            (be16(hdr, 4).unwrap_or(0) as usize).saturating_sub(l3_len - IPV6_HDR_LEN)
        } else {
            (be16(hdr, 2).unwrap_or(0) as usize).saturating_sub(l3_len)
        };
        let proto = if l4 == sys::RTE_MBUF_F_TX_TCP_CKSUM { PROTO_TCP } else { PROTO_UDP };
        let l4_data = ip.add(l3_len);
        std::ptr::write_bytes(l4_data.add(cksum_at), 0, 2);
        let mut sum = pseudo_header(hdr, v6, proto, l4_len);
        // The L4 part, over the packet's segments.
        let mut left = l4_len;
        let first = (seg_len - l2_len - l3_len).min(left);
        sum.add_raw(l4_data, first);
        left -= first;
        let mut seg = (*m).next;
        while left > 0 && !seg.is_null() {
            let n = ((*seg).data_len as usize).min(left);
            sum.add_raw(((*seg).buf_addr as *const u8).add((*seg).data_off as usize), n);
            left -= n;
            seg = (*seg).next;
        }
        let mut cksum = !sum.fold();
        if proto == PROTO_UDP && cksum == 0 {
            // 0 means "no checksum" for UDP: all ones is the same sum.
            cksum = 0xffff;
        }
        std::ptr::copy_nonoverlapping(cksum.to_be_bytes().as_ptr(), l4_data.add(cksum_at), 2);
    }
    Ok(())
}

/// Whether the application enabled an rx offload that [`rx_offload`] does.
pub fn rx_wants(offloads: u64) -> bool {
    offloads & (RX_CKSUM | sys::RTE_ETH_RX_OFFLOAD_VLAN_STRIP as u64) != 0
}

/// The rx offloads `offloads` asks for, on the received packet `m` (header filled).
///
/// # Safety
/// `m` is a valid packet owned by the caller.
#[inline(never)]
pub unsafe fn rx_offload(m: *mut sys::rte_mbuf, offloads: u64) {
    // SAFETY: per the caller's contract.
    unsafe {
        if offloads & sys::RTE_ETH_RX_OFFLOAD_VLAN_STRIP as u64 != 0
            && (*m).ol_flags & sys::RTE_MBUF_F_RX_VLAN_STRIPPED as u64 == 0
        {
            if let Some(tci) = rx_vlan_strip(m) {
                (*m).vlan_tci = tci;
                (*m).ol_flags |= (sys::RTE_MBUF_F_RX_VLAN | sys::RTE_MBUF_F_RX_VLAN_STRIPPED) as u64;
            }
        }
        if offloads & RX_CKSUM != 0 {
            let data = ((*m).buf_addr as *const u8).add((*m).data_off as usize);
            (*m).ol_flags |= rx_cksum_flags(data, (*m).data_len as usize, (*m).pkt_len as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame with correct checksums (computed independently of
    /// `Sum`: the classic add-and-carry over 16-bit words).
    fn udp4(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
        let total = 20 + 8 + payload.len();
        let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let c = reference_cksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        let ulen = 8 + payload.len();
        let mut udp = vec![0x12, 0x34, 0x00, 0x35, (ulen >> 8) as u8, ulen as u8, 0, 0];
        udp.extend_from_slice(payload);
        let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 17, (ulen >> 8) as u8, ulen as u8];
        pseudo.extend_from_slice(&udp);
        let c = reference_cksum(&pseudo);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&udp);
        f
    }

    fn reference_cksum(b: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for i in (0..b.len()).step_by(2) {
            let hi = b[i] as u32;
            let lo = if i + 1 < b.len() { b[i + 1] as u32 } else { 0 };
            s += (hi << 8) | lo;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn sum_in_pieces_equals_sum_at_once() {
        let data: Vec<u8> = (0..301u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut whole = Sum::default();
        whole.add(&data);
        for cut in [1, 2, 3, 150, 299, 300] {
            let mut parts = Sum::default();
            parts.add(&data[..cut]);
            parts.add(&data[cut..cut + 1]);
            parts.add(&data[cut + 1..]);
            assert_eq!(parts.fold(), whole.fold(), "cut at {cut}");
        }
        assert_eq!(!whole.fold(), reference_cksum(&data));
    }

    #[test]
    fn rx_reports_good_and_bad_checksums() {
        let f = udp4(b"hello, checksum");
        // SAFETY: pointers into live vectors of the given lengths.
        let flags = unsafe { rx_cksum_flags(f.as_ptr(), f.len(), f.len()) };
        assert_eq!(flags, (sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD | sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD) as u64);
        let mut bad_ip = f.clone();
        bad_ip[14 + 10] ^= 1;
        // SAFETY: as above.
        let flags = unsafe { rx_cksum_flags(bad_ip.as_ptr(), bad_ip.len(), bad_ip.len()) };
        assert_eq!(flags & sys::RTE_MBUF_F_RX_IP_CKSUM_MASK as u64, sys::RTE_MBUF_F_RX_IP_CKSUM_BAD as u64);
        let mut bad_l4 = f.clone();
        *bad_l4.last_mut().unwrap() ^= 0x40;
        // SAFETY: as above.
        let flags = unsafe { rx_cksum_flags(bad_l4.as_ptr(), bad_l4.len(), bad_l4.len()) };
        assert_eq!(flags, (sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD | sys::RTE_MBUF_F_RX_L4_CKSUM_BAD) as u64);
        // Padding after the datagram does not count; a packet in two segments is not
        // checked at L4 (unknown), only its IP header.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0xee; 7]);
        // SAFETY: as above.
        let flags = unsafe { rx_cksum_flags(padded.as_ptr(), padded.len(), padded.len()) };
        assert_eq!(flags, (sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD | sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD) as u64);
        // SAFETY: as above.
        let flags = unsafe { rx_cksum_flags(f.as_ptr(), f.len(), f.len() + 100) };
        assert_eq!(flags, sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD as u64);
        // Not IP: unknown (0).
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        // SAFETY: as above.
        assert_eq!(unsafe { rx_cksum_flags(arp.as_ptr(), arp.len(), arp.len()) }, 0);
        // Truncated garbage never reads out of bounds.
        for len in 0..f.len() {
            // SAFETY: a prefix of a live vector.
            let _ = unsafe { rx_cksum_flags(f.as_ptr(), len, len) };
        }
    }

    #[test]
    fn parse_skips_vlan_tags() {
        let f = udp4(b"x");
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&f[12..]);
        assert!(matches!(parse(&tagged), L3::Ipv4 { l2_len: 18, ihl: 20, proto: 17, fragment: false, .. }));
        // SAFETY: a live vector.
        let flags = unsafe { rx_cksum_flags(tagged.as_ptr(), tagged.len(), tagged.len()) };
        assert_eq!(flags, (sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD | sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD) as u64);
    }

    /// A one-segment mbuf over `frame`, with 128 bytes of headroom in `buf`.
    fn mbuf_over(buf: &mut Vec<u8>, frame: &[u8]) -> sys::rte_mbuf {
        buf.clear();
        buf.resize(128, 0);
        buf.extend_from_slice(frame);
        // SAFETY: rte_mbuf is a plain C struct; all-zero is a valid (empty) value.
        let mut m: sys::rte_mbuf = unsafe { std::mem::zeroed() };
        m.buf_addr = buf.as_mut_ptr() as *mut std::ffi::c_void;
        m.data_off = 128;
        m.data_len = frame.len() as u16;
        m.pkt_len = frame.len() as u32;
        m.nb_segs = 1;
        m.refcnt = 1;
        m
    }

    fn frame_of(m: &sys::rte_mbuf) -> Vec<u8> {
        // SAFETY: the test's buffer holds the frame.
        unsafe { std::slice::from_raw_parts((m.buf_addr as *const u8).add(m.data_off as usize), m.data_len as usize).to_vec() }
    }

    #[test]
    fn tx_fills_checksums_and_inserts_the_tag() {
        let good = udp4(b"some payload, odd length");
        let mut zeroed = good.clone();
        zeroed[14 + 10..14 + 12].fill(0);
        zeroed[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0x12, 0x34]); // a pseudo-header sum, say
        let mut buf = Vec::new();
        let mut m = mbuf_over(&mut buf, &zeroed);
        m.ol_flags = sys::RTE_MBUF_F_TX_IPV4 | sys::RTE_MBUF_F_TX_IP_CKSUM | sys::RTE_MBUF_F_TX_UDP_CKSUM;
        m.__bindgen_anon_3.tx_offload = 14 | (20 << 7);
        // SAFETY: our test mbuf over a live buffer.
        unsafe { tx_offload(&mut m) }.unwrap();
        assert_eq!(frame_of(&m), good);
        assert_eq!(m.ol_flags & TX_FLAGS, 0);

        let mut m = mbuf_over(&mut buf, &good);
        m.ol_flags = sys::RTE_MBUF_F_TX_VLAN;
        m.vlan_tci = 0x0123;
        // SAFETY: as above.
        unsafe { tx_offload(&mut m) }.unwrap();
        let tagged = frame_of(&m);
        assert_eq!(tagged.len(), good.len() + 4);
        assert_eq!(&tagged[..12], &good[..12]);
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x01, 0x23]);
        assert_eq!(&tagged[16..], &good[12..]);
        // And rx strips it again.
        let mut m = mbuf_over(&mut buf, &tagged);
        // SAFETY: as above.
        unsafe { rx_offload(&mut m, RX_OFFLOAD_CAPA) };
        assert_eq!(frame_of(&m), good);
        assert_eq!(m.vlan_tci, 0x0123);
        let want = (sys::RTE_MBUF_F_RX_VLAN_STRIPPED | sys::RTE_MBUF_F_RX_VLAN | sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD | sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD) as u64;
        assert_eq!(m.ol_flags, want);

        // Headers not in the first segment: refused, packet untouched.
        let mut m = mbuf_over(&mut buf, &zeroed[..30]);
        m.ol_flags = sys::RTE_MBUF_F_TX_IPV4 | sys::RTE_MBUF_F_TX_IP_CKSUM | sys::RTE_MBUF_F_TX_UDP_CKSUM;
        m.__bindgen_anon_3.tx_offload = 14 | (20 << 7);
        // SAFETY: as above.
        assert_eq!(unsafe { tx_offload(&mut m) }, Err(TxOffloadError::HeadersSplit));
    }
}

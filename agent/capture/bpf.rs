//! The classic BPF program the kernel runs on every frame before it reaches meshtap's packet
//! socket: TCP over IPv4 or IPv6 on Ethernet, optionally only to or from given ports (what
//! `tcpdump 'tcp and (port A or port B)'` compiles to, minus IPv6 extension headers). Writing the
//! dozen instructions here avoids linking libpcap just to compile one fixed filter shape; the
//! tests run the program on real frames with a small interpreter of the opcodes used.

use std::collections::HashMap;

/// One classic BPF instruction, laid out as `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcodes (linux/filter.h).
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

/// Bytes of each accepted frame handed to meshtap: whole frames, including GSO super-packets.
pub const SNAPLEN: u32 = 262_144;

/// At most this many ports (each costs two instructions; jumps are 8-bit).
pub const MAX_PORTS: usize = 48;

#[derive(Clone, Copy)]
enum To {
    Next,
    Label(&'static str),
}

struct Asm {
    code: Vec<(u16, To, To, u32)>,
    labels: HashMap<&'static str, usize>,
}

impl Asm {
    fn op(&mut self, code: u16, k: u32) {
        self.code.push((code, To::Next, To::Next, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.code.push((code, jt, jf, k));
    }
    fn label(&mut self, name: &'static str) {
        self.labels.insert(name, self.code.len());
    }
    fn assemble(self) -> Vec<Insn> {
        let resolve = |from: usize, to: To| -> u8 {
            match to {
                To::Next => 0,
                To::Label(l) => {
                    let target = self.labels[l];
                    u8::try_from(target - from - 1).expect("jump fits: ports are capped")
                }
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(i, &(code, jt, jf, k))| Insn {
                code,
                jt: resolve(i, jt),
                jf: resolve(i, jf),
                k,
            })
            .collect()
    }
}

/// The filter for TCP frames, to or from any of `ports` (all TCP when empty).
pub fn tcp_ports(ports: &[u16]) -> Result<Vec<Insn>, String> {
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "at most {MAX_PORTS} ports can be filtered, got {}",
            ports.len()
        ));
    }
    let mut a = Asm {
        code: Vec::new(),
        labels: HashMap::new(),
    };
    let match_ports = |a: &mut Asm, load: u16, src_off: u32| {
        for off in [src_off, src_off + 2] {
            a.op(load, off);
            for &p in ports {
                a.jump(JEQ_K, p.into(), To::Label("accept"), To::Next);
            }
        }
        a.op(RET_K, 0);
    };
    a.op(LD_H_ABS, 12); // EtherType
    a.jump(JEQ_K, 0x0800, To::Next, To::Label("ipv6"));
    a.op(LD_B_ABS, 23); // IPv4 protocol
    a.jump(JEQ_K, 6, To::Next, To::Label("drop"));
    a.op(LD_H_ABS, 20); // flags + fragment offset
    a.jump(JSET_K, 0x1fff, To::Label("drop"), To::Next); // later fragments carry no TCP header
    if ports.is_empty() {
        a.op(RET_K, SNAPLEN);
    } else {
        a.op(LDX_B_MSH, 14); // X = IPv4 header length
        match_ports(&mut a, LD_H_IND, 14);
    }
    a.label("ipv6");
    a.jump(JEQ_K, 0x86dd, To::Next, To::Label("drop"));
    a.op(LD_B_ABS, 20); // IPv6 next header
    a.jump(JEQ_K, 6, To::Next, To::Label("drop"));
    if ports.is_empty() {
        a.op(RET_K, SNAPLEN);
    } else {
        match_ports(&mut a, LD_H_ABS, 54);
    }
    a.label("accept");
    a.op(RET_K, SNAPLEN);
    a.label("drop");
    a.op(RET_K, 0);
    Ok(a.assemble())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::packet::build::{frame, frame_v6, udp_frame, Tcp};

    /// Runs a program on a frame: the number of bytes accepted (0 = dropped). Only the opcodes
    /// `tcp_ports` emits; an out-of-bounds load drops the frame, as in the kernel.
    fn run(prog: &[Insn], pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |i: usize| pkt.get(i).map(|&b| b as u32);
        let half = |i: usize| Some((byte(i)? << 8) | byte(i + 1)?);
        loop {
            let insn = prog[pc];
            pc += 1;
            match insn.code {
                LD_H_ABS => match half(insn.k as usize) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_B_ABS => match byte(insn.k as usize) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_H_IND => match half(x as usize + insn.k as usize) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LDX_B_MSH => match byte(insn.k as usize) {
                    Some(v) => x = 4 * (v & 0xf),
                    None => return 0,
                },
                JEQ_K => pc += if a == insn.k { insn.jt } else { insn.jf } as usize,
                JSET_K => pc += if a & insn.k != 0 { insn.jt } else { insn.jf } as usize,
                RET_K => return insn.k,
                other => panic!("opcode {other:#x} not expected"),
            }
        }
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        frame(Tcp {
            src: ([10, 0, 0, 1], sport),
            dst: ([10, 0, 0, 2], dport),
            seq: 1,
            ack: None,
            flags: "",
            payload: b"x",
        })
    }

    #[test]
    fn port_filter_accepts_either_direction_of_listed_ports_only() {
        let prog = tcp_ports(&[8080, 15006]).unwrap();
        assert_eq!(run(&prog, &tcp(40000, 8080)), SNAPLEN);
        assert_eq!(run(&prog, &tcp(8080, 40000)), SNAPLEN);
        assert_eq!(run(&prog, &tcp(15006, 1)), SNAPLEN);
        assert_eq!(run(&prog, &tcp(40000, 8081)), 0);
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(
            run(&prog, &frame_v6((v6, 1234), (v6, 8080), 0, b"")),
            SNAPLEN
        );
        assert_eq!(run(&prog, &frame_v6((v6, 1234), (v6, 80), 0, b"")), 0);
    }

    #[test]
    fn ip_options_move_the_ports_and_the_filter_follows() {
        // Rewrite a frame with a 24-byte IPv4 header (one NOP option word).
        let f = tcp(40000, 8080);
        let mut g = f[..14].to_vec();
        g.push(0x46);
        g.extend_from_slice(&f[15..34]);
        g.extend_from_slice(&[1, 1, 1, 1]);
        g.extend_from_slice(&f[34..]);
        let prog = tcp_ports(&[8080]).unwrap();
        assert_eq!(run(&prog, &g), SNAPLEN);
    }

    #[test]
    fn without_ports_all_tcp_passes_and_nothing_else() {
        let prog = tcp_ports(&[]).unwrap();
        assert_eq!(run(&prog, &tcp(1, 2)), SNAPLEN);
        let udp = udp_frame();
        assert_eq!(run(&prog, &udp), 0);
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        assert_eq!(run(&prog, &arp), 0);
        assert_eq!(run(&prog, &[0u8; 4]), 0, "short frames are dropped");
        // A later IPv4 fragment (offset != 0) is dropped.
        let mut frag = tcp(1, 2);
        frag[20] = 0x00;
        frag[21] = 0x10;
        assert_eq!(run(&prog, &frag), 0);
    }

    #[test]
    fn too_many_ports_is_an_error() {
        let ports: Vec<u16> = (1..=MAX_PORTS as u16 + 1).collect();
        assert!(tcp_ports(&ports).is_err());
        let ports: Vec<u16> = (1..=MAX_PORTS as u16).collect();
        assert!(tcp_ports(&ports).is_ok());
    }
}

//! `RegisterFile` answers the register callbacks by name, all or nothing.

use hvemu::*;

#[test]
fn a_bad_pair_leaves_the_file_unchanged() {
    let mut f = RegisterFile::long_mode();
    let before = f.clone();
    let r = f.set(
        &[RegisterName::RAX, RegisterName::CS],
        &[RegisterValue::U64(1), RegisterValue::U64(2)],
    );
    assert_eq!(r, Err(RegisterFileError::WrongValueKind(RegisterName::CS)));
    assert_eq!(f, before);
    let r = f.set(
        &[RegisterName::RAX, RegisterName(0x7777)],
        &[RegisterValue::U64(1); 2],
    );
    assert_eq!(
        r,
        Err(RegisterFileError::UnknownRegister(RegisterName(0x7777)))
    );
    assert_eq!(f, before);
    f.set(
        &[RegisterName::RAX, RegisterName::RIP],
        &[RegisterValue::U64(1), RegisterValue::U64(9)],
    )
    .unwrap();
    assert_eq!((f.gpr(0), f.rip()), (1, 9));
}

#[test]
fn every_platform_name_round_trips() {
    let mut f = RegisterFile::real_mode();
    let mut names: Vec<RegisterName> = (0..=0x1B).map(RegisterName).collect();
    names.extend([
        RegisterName::CR0,
        RegisterName::CR2,
        RegisterName::CR3,
        RegisterName::CR4,
    ]);
    names.extend((0..16).map(|n| RegisterName::xmm(n).unwrap()));
    names.push(RegisterName::EFER);
    let mut values = vec![RegisterValue::default(); names.len()];
    f.get(&names, &mut values).unwrap();
    // Change every value, write back, read again.
    let changed: Vec<RegisterValue> = values
        .iter()
        .enumerate()
        .map(|(i, v)| match *v {
            RegisterValue::U64(x) => RegisterValue::U64(x ^ (i as u64 + 1)),
            RegisterValue::U128(x) => RegisterValue::U128(x ^ (i as u128 + 1)),
            RegisterValue::Segment(mut s) => {
                s.base ^= i as u64 + 1;
                RegisterValue::Segment(s)
            }
            RegisterValue::Table(mut t) => {
                t.base ^= i as u64 + 1;
                RegisterValue::Table(t)
            }
            other => other,
        })
        .collect();
    f.set(&names, &changed).unwrap();
    let mut again = vec![RegisterValue::default(); names.len()];
    f.get(&names, &mut again).unwrap();
    assert_eq!(again, changed);
}

/// The XMM, YMM and ZMM names of one register are views of the same 512 bits (XMM16–31 of the
/// upper bank too), and the hvemu extension names round-trip like the platform's.
#[test]
fn vector_views_share_their_lanes() {
    let mut f = RegisterFile::long_mode();
    for n in 0..32u8 {
        let zmm: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(7) ^ n);
        f.set(
            &[RegisterName::zmm(n).unwrap()],
            &[RegisterValue::U512(zmm)],
        )
        .unwrap();
        let names = [
            RegisterName::xmm(n).unwrap(),
            RegisterName::ymm(n).unwrap(),
            RegisterName::zmm(n).unwrap(),
        ];
        let mut v = [RegisterValue::default(); 3];
        f.get(&names, &mut v).unwrap();
        let low = u128::from_le_bytes(zmm[..16].try_into().unwrap());
        assert_eq!(v[0], RegisterValue::U128(low), "xmm{n}");
        assert_eq!(
            v[1],
            RegisterValue::U256(zmm[..32].try_into().unwrap()),
            "ymm{n}"
        );
        assert_eq!(v[2], RegisterValue::U512(zmm), "zmm{n}");
        // A YMM write replaces the low 256 bits and keeps the rest.
        let ymm = [0xA5u8 ^ n; 32];
        f.set(&[names[1]], &[RegisterValue::U256(ymm)]).unwrap();
        let mut after = [RegisterValue::default()];
        f.get(&[names[2]], &mut after).unwrap();
        let mut expected = zmm;
        expected[..32].copy_from_slice(&ymm);
        assert_eq!(
            after[0],
            RegisterValue::U512(expected),
            "zmm{n} after ymm{n}"
        );
    }
    let scalars = [
        (RegisterName::XCR0, RegisterValue::U64(0xE7)),
        (RegisterName::CR8, RegisterValue::U64(0xF)),
        (RegisterName::DR7, RegisterValue::U64(0x400)),
        (RegisterName::opmask(7).unwrap(), RegisterValue::U64(0xFFFF)),
        (
            RegisterName::fp_mmx(3).unwrap(),
            RegisterValue::U128(3 << 64 | 9),
        ),
        (RegisterName::FP_CONTROL_STATUS, RegisterValue::U128(0x37F)),
        (
            RegisterName::XMM_CONTROL_STATUS,
            RegisterValue::U128(0x1F80 << 32),
        ),
        (RegisterName::PENDING_EVENT, RegisterValue::U128(1 << 100)),
    ];
    for (name, value) in scalars {
        f.set(&[name], &[value]).unwrap();
        let mut out = [RegisterValue::default()];
        f.get(&[name], &mut out).unwrap();
        assert_eq!(out[0], value, "{name:?}");
    }
}

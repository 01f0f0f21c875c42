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

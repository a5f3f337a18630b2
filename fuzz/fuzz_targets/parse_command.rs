//! Command records of arbitrary bytes: never a panic, and what is accepted is a command
//! ipp-actions can execute and PostgreSQL can store: its amount fits its kind and is 1 to
//! 2^53, its texts are short and free of control characters (a NUL would make the ledger
//! insert fail), and it reads back the same from the JSON it is written as.
#![no_main]

use ipp_schemas::{
    command::{MAX_AMOUNT, MAX_TEXT_CHARS},
    Command,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    let Ok(command) = Command::parse(value) else {
        return;
    };
    match (command.kind.amount_required(), command.amount) {
        (Some(true), None) | (None, Some(_)) => panic!("amount does not fit {}", command.kind),
        (_, Some(amount)) => assert!((1..=MAX_AMOUNT).contains(&amount), "{amount}"),
        _ => {}
    }
    for text in [&command.reference, &command.description].into_iter().flatten() {
        assert!(text.chars().count() <= MAX_TEXT_CHARS);
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    let again = Command::parse(command.to_json().as_bytes()).expect("its own JSON parses");
    assert_eq!(again, command);
});

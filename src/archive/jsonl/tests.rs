use super::validate::plain_run;
use super::*;

fn check(chunks: &[&[u8]]) -> Result<JsonStats, JsonLinesError> {
    let mut checker = JsonLinesChecker::new(1 << 20);
    for chunk in chunks {
        checker.feed(chunk)?;
    }
    checker.finish()
}

fn one(line: &[u8]) -> Result<JsonStats, JsonLinesError> {
    check(&[line])
}

#[test]
fn lines_across_chunks_and_stats() {
    let stats = check(&[
        b"{\"timestamp\":5,\"a\":[1,2]}\n{\"b\":",
        b"{}}\n\n  \n{\"timestamp\":9}",
    ])
    .unwrap();
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.first_timestamp, Some(5));
    assert_eq!(stats.last_timestamp, Some(9));
}

#[test]
fn bad_lines_are_numbered() {
    assert_eq!(check(&[b"{}\n[1,2]\n"]).unwrap_err().line, 2);
    assert_eq!(check(&[b"{}\n{}\n{\"torn\":"]).unwrap_err().line, 3);
    assert_eq!(check(&[b"{}\n{} {}\n"]).unwrap_err().line, 2);
    assert_eq!(check(&[b"\"str\"\n"]).unwrap_err().line, 1);
    let err = check(&[b"{}\n{\"a\":1,}\n"]).unwrap_err();
    assert_eq!(err.line, 2);
    assert!(err.message.contains("not valid JSON"), "{}", err.message);
    let err = check(&[b"[1]\n"]).unwrap_err();
    assert!(
        err.message.contains("not a JSON object but an array"),
        "{}",
        err.message
    );
    assert_eq!(
        check(&[b"{\"s\":\"\xff\"}\n"]).unwrap_err().line,
        1,
        "invalid UTF-8"
    );
}

#[test]
fn overlong_line_is_refused() {
    let mut checker = JsonLinesChecker::new(8);
    assert_eq!(checker.feed(b"{\"a\":\"0123456789\"}").unwrap_err().line, 1);
}

/// Valid JSON that parsers (simd-json among them) refuse because they
/// cannot hold the value, and other corners of RFC 8259.
#[test]
fn every_valid_object_passes() {
    let long_integer = format!("{{\"x\":{}}}", "9".repeat(400));
    let long_fraction = format!("{{\"x\":0.{}}}", "1".repeat(400));
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_objects = format!("{}{{}}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let valid: &[&[u8]] = &[
        br#"{"id":18446744073709551616}"#,
        br#"{"id":-9223372036854775809}"#,
        br#"{"id":123456789012345678901234567890}"#,
        long_integer.as_bytes(),
        long_fraction.as_bytes(),
        br#"{"x":1e400}"#,
        br#"{"x":-1E+400}"#,
        br#"{"x":1e-400}"#,
        br#"{"x":1.8e308}"#,
        br#"{"x":1e99999999999999999999}"#,
        br#"{"x":-0}"#,
        br#"{"x":-0.0e-0}"#,
        br#"{"x":[0,-0,1.5,2E5,3e+0,4e-0]}"#,
        br#"{"s":"\ud800"}"#,
        br#"{"s":"\udc00\ud800"}"#,
        br#"{"\ud800":1}"#,
        br#"{"s":"\ud83d\ude00 \u0000 \/ \" \\ \b\f\n\r\t \uABCD"}"#,
        "{\"s\":\"\u{7f} é \u{2028} 😀\"}".as_bytes(),
        deep.as_bytes(),
        deep_objects.as_bytes(),
        b"\t{ \"a\" :\r1 , \"b\"\t: [ ] }\r",
        br#"{"a":1,"a":2}"#,
        br#"{"":{}}"#,
        br#"{"a":[true,false,null,{},[],""]}"#,
    ];
    for line in valid {
        let result = one(line);
        assert!(
            result.is_ok(),
            "{:?}: {:?}",
            String::from_utf8_lossy(&line[..line.len().min(60)]),
            result
        );
    }
}

#[test]
fn every_invalid_line_fails() {
    let invalid: &[&[u8]] = &[
        // raw control characters in strings and keys
        b"{\"s\":\"a\x01b\"}",
        b"{\"s\":\"a\x00b\"}",
        b"{\"s\":\"a\x1fb\"}",
        b"{\"s\":\"a\tb\"}",
        b"{\"s\":\"a\rb\"}",
        b"{\"a\x01\":1}",
        // invalid UTF-8, inside and outside strings
        b"{\"s\":\"\xff\"}",
        b"{\"s\":\"\xc0\xaf\"}",
        b"{\"s\":\"\xed\xa0\x80\"}",
        b"{\"s\":\"\xe2\x82\"}",
        b"{\"s\":\"\xf4\x90\x80\x80\"}",
        b"{\"a\":1}\xff",
        b"\xef\xbb\xbf{}",
        // numbers
        br#"{"x":01}"#,
        br#"{"x":-01}"#,
        br#"{"x":00}"#,
        br#"{"x":-}"#,
        br#"{"x":1.}"#,
        br#"{"x":.5}"#,
        br#"{"x":1e}"#,
        br#"{"x":1e+}"#,
        br#"{"x":+1}"#,
        br#"{"x":0x10}"#,
        br#"{"x":1.e5}"#,
        br#"{"x":NaN}"#,
        br#"{"x":Infinity}"#,
        br#"{"x":-Infinity}"#,
        br#"{"a":1_000}"#,
        br#"{"x":-a}"#,
        // escapes
        br#"{"s":"\x41"}"#,
        br#"{"s":"\u12"}"#,
        br#"{"s":"\U0041"}"#,
        br#"{"s":"\u00G0"}"#,
        br#"{"s":"\'"}"#,
        br#"{"a":"\\\"}"#,
        br#"{"a":"\u"#,
        // literals
        br#"{"a":tru}"#,
        br#"{"a":True}"#,
        br#"{"a":truex}"#,
        br#"{"a":nulll}"#,
        br#"{"a":nul"#,
        // structure
        br#"{"a":1,}"#,
        br#"{"a":[1,]}"#,
        br#"{"a" 1}"#,
        br#"{"a"::1}"#,
        br#"{a:1}"#,
        br#"{'a':1}"#,
        br#"{1:1}"#,
        br#"{,}"#,
        br#"{"a":}"#,
        br#"{"a"}"#,
        br#"{"a":1,,"b":2}"#,
        br#"{"a":[1 2]}"#,
        br#"{"a":"b"c}"#,
        br#"{"a":[1}]"#,
        br#"{"a":[}"#,
        br#"{"a":{]}"#,
        br#"{"a":1 /* c */}"#,
        br#"}{"#,
        br#"{"#,
        br#"{"a""#,
        br#"{"a":1"#,
        // more than one value, or something around it
        br#"{}x"#,
        br#"{} {}"#,
        b"{}\x00",
        b"\x0c{}",
        b"\x0b{}",
        b"\xc2\xa0{}",
        b"\x0c",
    ];
    for line in invalid {
        let err = one(line).expect_err(&String::from_utf8_lossy(line));
        assert_eq!(err.line, 1);
        assert!(err.message.starts_with("not valid JSON: "), "{err}");
    }
}

#[test]
fn messages_say_where_and_what() {
    let message = |line: &[u8]| one(line).unwrap_err().message;
    assert_eq!(
        message(b"{\"s\":\"\xff\"}"),
        "not valid JSON: invalid UTF-8 at column 7"
    );
    assert_eq!(
        message(br#"{"a":1,}"#),
        "not valid JSON: expected a string as object key at column 8"
    );
    assert_eq!(
        message(br#"{"a":[1"#),
        "not valid JSON: expected `,` or `]` at end of line"
    );
    assert_eq!(
        message(b"{\"s\":\"\x01\"}"),
        "not valid JSON: unescaped control character in a string at column 7"
    );
    assert_eq!(message(b"[1]"), "not a JSON object but an array");
    assert_eq!(message(b" \"s\""), "not a JSON object but a string");
    assert_eq!(message(b"-1e400"), "not a JSON object but a number");
    assert_eq!(message(b"false"), "not a JSON object but a boolean");
    assert_eq!(message(b"null\r"), "not a JSON object but null");
    assert_eq!(
        message(b"[1"),
        "not valid JSON: expected `,` or `]` at end of line",
        "validity is decided before the kind"
    );
}

#[test]
fn blank_and_crlf_lines() {
    let stats = one(b"{\"timestamp\":1}\r\n\r\n \t\r\n\n{}\r\n").unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(stats.first_timestamp, Some(1));
}

/// The first top-level member named "timestamp" counts, when its value is
/// an integer that fits in an i64.
#[test]
fn timestamps() {
    let timestamp = |line: &str| one(line.as_bytes()).unwrap().first_timestamp;
    assert_eq!(timestamp(r#"{"timestamp":-0}"#), Some(0));
    assert_eq!(
        timestamp(r#"{"timestamp":9223372036854775807}"#),
        Some(i64::MAX)
    );
    assert_eq!(
        timestamp(r#"{"timestamp":-9223372036854775808}"#),
        Some(i64::MIN)
    );
    assert_eq!(timestamp(r#"{"timestamp":9223372036854775808}"#), None);
    assert_eq!(timestamp(r#"{"timestamp":123456789012345678901234}"#), None);
    assert_eq!(timestamp(r#"{"timestamp":5.0}"#), None);
    assert_eq!(timestamp(r#"{"timestamp":1e3}"#), None);
    assert_eq!(timestamp(r#"{"timestamp":"5"}"#), None);
    assert_eq!(
        timestamp(r#"{"a":{"timestamp":5},"b":[{"timestamp":6}]}"#),
        None
    );
    assert_eq!(timestamp(r#"{"timest\u0061mp":5}"#), Some(5));
    assert_eq!(timestamp(r#"{"\u0074imestam\u0070" : 6}"#), Some(6));
    assert_eq!(timestamp(r#"{"timestamp\u0000":5}"#), None);
    assert_eq!(
        timestamp(r#"{"\timestamp":5}"#),
        None,
        "a tab, then \"imestamp\""
    );
    assert_eq!(timestamp(r#"{"\u0009imestamp":5}"#), None);
    assert_eq!(timestamp(r#"{"timestamp\/":5}"#), None);
    assert_eq!(timestamp(r#"{"timestamp":1,"timestamp":2}"#), Some(1));
    assert_eq!(timestamp(r#"{"timestamp":"x","timestamp":7}"#), None);
    assert_eq!(timestamp(r#"{"x":{"a":[1]},"timestamp" : 8 }"#), Some(8));
}

#[test]
fn plain_run_finds_the_first_special_byte() {
    for len in 0..24 {
        for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
            for at in 0..=len {
                let mut line = vec![b'a'; len];
                // Bytes that look special to a sloppy bit trick.
                for (i, b) in line.iter_mut().enumerate() {
                    *b = [b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff][i % 9];
                }
                if at < len {
                    line[at] = special;
                    line.iter_mut().skip(at + 1).for_each(|b| *b = b'"');
                }
                let non_ascii = line[..at].iter().any(|&b| b >= 0x80);
                assert_eq!(plain_run(&line, 0), (at, non_ascii), "{line:?}");
            }
        }
    }
}

/// Single-core throughput on the generated WAL, per 100 MiB. Run it with
/// `cargo test --release --lib archive::jsonl::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn throughput() {
    let data = crate::walgen::EventGenerator::new(1).segment(100 << 20);
    let mib = data.len() as f64 / (1 << 20) as f64;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let mut checker = JsonLinesChecker::new(16 << 20);
        for chunk in data.chunks(1 << 20) {
            checker.feed(chunk).unwrap();
        }
        let stats = checker.finish().unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{mib:.0} MiB, {stats:?}: {:.0} ms per 100 MiB, {:.0} MiB/s",
            secs * 1000.0 * 100.0 / mib,
            mib / secs
        );
    }
}

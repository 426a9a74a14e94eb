//! A labelled set for the value detectors, generated from templates and synthetic values
//! (valid ones and near misses that only a checksum or structure check can tell apart).
//!
//! Used by the detector tests and written out by `palisade-guard-train --values-out FILE` for
//! `palisade guard eval`. Deterministic for a seed.

use serde::Serialize;

use crate::training::Rng;

/// One generated row: the text and the values a perfect detector finds in it.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub text: String,
    pub values: Vec<Expected>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Expected {
    pub kind: String,
    pub value: String,
}

const FIRST: &[&str] = &[
    "amira", "john", "li", "fatma", "omar", "sofia", "lukas", "yasmin", "pierre", "nour", "maria",
    "ahmed", "emma", "karim", "hannah",
];
const LAST: &[&str] = &[
    "hassan", "smith", "wang", "elsayed", "mueller", "rossi", "dupont", "khalil", "garcia",
    "novak", "ibrahim", "jones",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "corp.example.net",
    "bank-example.eg",
    "uni.example.de",
];

fn luhn_digit(body: &[u8]) -> u8 {
    // The check digit that makes body+digit pass Luhn.
    let mut sum = 0u32;
    for (i, &d) in body.iter().rev().enumerate() {
        let mut v = u32::from(d);
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    ((10 - sum % 10) % 10) as u8
}

fn card(r: &mut Rng, valid: bool) -> String {
    let (prefix, len) = match r.below(4) {
        0 => ("4", 16),
        1 => ("5", 16),
        2 => ("37", 15),
        _ => ("6011", 16),
    };
    let mut d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
    if prefix == "5" {
        d.push(1 + r.below(5) as u8);
    }
    while d.len() < len - 1 {
        d.push(r.below(10) as u8);
    }
    let mut check = luhn_digit(&d);
    if !valid {
        check = (check + 1 + r.below(8) as u8) % 10;
    }
    d.push(check);
    let s: String = d.iter().map(|x| char::from(b'0' + x)).collect();
    match (len, r.below(3)) {
        (16, 0) => format!("{} {} {} {}", &s[..4], &s[4..8], &s[8..12], &s[12..]),
        (16, 1) => format!("{}-{}-{}-{}", &s[..4], &s[4..8], &s[8..12], &s[12..]),
        (15, 0) => format!("{} {} {}", &s[..4], &s[4..10], &s[10..]),
        _ => s,
    }
}

fn iban(r: &mut Rng, valid: bool) -> String {
    let (cc, bban_len, alpha) = match r.below(4) {
        0 => ("DE", 18, false),
        1 => ("GB", 18, true),
        2 => ("EG", 25, false),
        _ => ("FR", 23, false),
    };
    let mut bban = String::new();
    if alpha {
        for _ in 0..4 {
            bban.push(char::from(b'A' + r.below(26) as u8));
        }
    }
    bban.push_str(&r.digits(bban_len - bban.len()));
    // Check digits: 98 - (BBAN + CC + "00") mod 97.
    let mut rem: u32 = 0;
    for c in bban.bytes().chain(cc.bytes()).chain(*b"00") {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    let mut check = 98 - rem;
    if !valid {
        check = (check + 1 + r.below(50) as u32) % 97 + 2;
        if check == 98 - rem {
            check = if check > 2 { check - 1 } else { check + 1 };
        }
    }
    let compact = format!("{cc}{check:02}{bban}");
    if r.below(2) == 0 {
        compact
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        compact
    }
}

fn egypt_id(r: &mut Rng, valid: bool) -> String {
    let century = if r.below(2) == 0 { 2 } else { 3 };
    let yy = if century == 2 {
        40 + r.below(60)
    } else {
        r.below(24)
    };
    let mut mm = 1 + r.below(12);
    let mut dd = 1 + r.below(28);
    let govs = [
        1, 2, 3, 4, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 25, 26, 27, 28, 29, 31, 32,
        33, 34, 35, 88,
    ];
    let mut gov = govs[r.below(govs.len() as u64) as usize];
    if !valid {
        match r.below(3) {
            0 => mm = 13 + r.below(7),
            1 => dd = 32 + r.below(8),
            _ => gov = [0, 5, 9, 20, 40, 66, 99][r.below(7) as usize],
        }
    }
    format!("{century}{yy:02}{mm:02}{dd:02}{gov:02}{}", r.digits(5))
}

fn ssn(r: &mut Rng, valid: bool) -> String {
    let area = if valid {
        let a = 1 + r.below(898);
        if a == 666 {
            667
        } else {
            a
        }
    } else {
        [0, 666, 900 + r.below(99)][r.below(3) as usize]
    };
    format!("{area:03}-{:02}-{:04}", 1 + r.below(98), 1 + r.below(9998))
}

fn phone(r: &mut Rng) -> String {
    match r.below(4) {
        0 => format!("+20 10 {} {}", r.digits(4), r.digits(4)),
        1 => format!("+44 20 {} {}", r.digits(4), r.digits(4)),
        2 => format!("+1 415 {} {}", r.digits(3), r.digits(4)),
        _ => format!("+49 30 {}{}", r.digits(4), r.digits(4)),
    }
}

fn email(r: &mut Rng) -> String {
    let sep = r.pick(&[".", "_", ""]);
    format!(
        "{}{sep}{}{}@{}",
        r.pick(FIRST),
        r.pick(LAST),
        if r.below(3) == 0 {
            r.digits(2)
        } else {
            String::new()
        },
        r.pick(DOMAINS)
    )
}

fn ipv4(r: &mut Rng) -> String {
    format!(
        "{}.{}.{}.{}",
        1 + r.below(223),
        r.below(256),
        r.below(256),
        1 + r.below(254)
    )
}

fn secret(r: &mut Rng) -> (String, &'static str) {
    let alnum = |r: &mut Rng, n: usize| -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..n)
            .map(|_| char::from(A[r.below(A.len() as u64) as usize]))
            .collect()
    };
    let upper = |r: &mut Rng, n: usize| -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        (0..n)
            .map(|_| char::from(A[r.below(A.len() as u64) as usize]))
            .collect()
    };
    match r.below(7) {
        0 => (format!("AKIA{}", upper(r, 16)), "aws_access_key"),
        1 => (format!("ghp_{}", alnum(r, 36)), "github_token"),
        2 => (format!("sk-proj-{}", alnum(r, 48)), "openai_key"),
        3 => (
            format!("xoxb-{}-{}", r.digits(11), alnum(r, 24)),
            "slack_token",
        ),
        4 => (format!("AIza{}", alnum(r, 35)), "google_api_key"),
        5 => (
            format!("eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}", alnum(r, 30), alnum(r, 43)),
            "jwt",
        ),
        _ => (format!("sk_live_{}", alnum(r, 24)), "stripe_key"),
    }
}

const TEMPLATES: &[&str] = &[
    "Please update the record: {v}. Thanks!",
    "Customer wrote: my details are {v} if you need them.",
    "Can you check why {v} fails validation in our form?",
    "Forwarding this: {v} (received yesterday at 14:05).",
    "Note for the ticket #4821 — value {v}, priority 2.",
    "{v} is what I typed, but the page shows an error.",
];

/// Texts with numbers that are none of the values (dates, amounts, versions, order numbers).
const NEGATIVES: &[&str] = &[
    "Order 4481-2290 shipped on 2024-03-15 for 129.99 EUR.",
    "Version 2.14.3 fixes 17 bugs; see release notes from 12/05/2023.",
    "Room 402, floor 4, meeting at 10:30 with 12 attendees.",
    "The invoice total is 1,234,567.89 and is due in 30 days.",
    "Call extension 2231 or visit building 7 before 5 pm.",
    "Tracking code 1Z999AA10123456784 arrived in 3 parcels.",
    "Our fiscal year 2025 revenue grew 14% to 8.2 million.",
    "Use port 8443 and timeout 120 seconds for the API.",
    "The patient is 45 years old and weighs 72 kg.",
    "Run pip install numpy==1.26.4 then restart the kernel.",
    "ISBN 978-3-16-148410-0 is the second edition.",
    "The serial number 20240115 is printed on the box.",
];

/// Generates `n` samples: valid values in templates, near misses, and value-free texts.
pub fn generate(seed: u64, n: usize) -> Vec<Sample> {
    let mut r = Rng(seed | 1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let template = r.pick(TEMPLATES);
        let fill = |v: &str| template.replace("{v}", v);
        let sample = match i % 14 {
            0 => {
                let v = email(&mut r);
                Sample {
                    text: fill(&v),
                    values: vec![exp("email", &v)],
                }
            }
            1 => {
                let v = card(&mut r, true);
                Sample {
                    text: fill(&format!("card {v}")),
                    values: vec![exp("card", &v)],
                }
            }
            2 => {
                let v = card(&mut r, false);
                Sample {
                    text: fill(&format!("card {v}")),
                    values: vec![],
                }
            }
            3 => {
                let v = iban(&mut r, true);
                Sample {
                    text: fill(&format!("IBAN {v}")),
                    values: vec![exp("iban", &v)],
                }
            }
            4 => {
                let v = iban(&mut r, false);
                Sample {
                    text: fill(&format!("IBAN {v}")),
                    values: vec![],
                }
            }
            5 => {
                let v = egypt_id(&mut r, true);
                Sample {
                    text: fill(&format!("national ID {v}")),
                    values: vec![exp("egypt_national_id", &v)],
                }
            }
            6 => {
                let v = egypt_id(&mut r, false);
                Sample {
                    text: fill(&format!("national ID {v}")),
                    values: vec![],
                }
            }
            7 => {
                let v = ssn(&mut r, true);
                Sample {
                    text: fill(&format!("SSN {v}")),
                    values: vec![exp("ssn", &v)],
                }
            }
            8 => {
                let v = ssn(&mut r, false);
                Sample {
                    text: fill(&format!("ref {v}")),
                    values: vec![],
                }
            }
            9 => {
                let v = phone(&mut r);
                Sample {
                    text: fill(&format!("phone {v}")),
                    values: vec![exp("phone", &v)],
                }
            }
            10 => {
                let v = ipv4(&mut r);
                Sample {
                    text: fill(&format!("from host {v}")),
                    values: vec![exp("ipv4", &v)],
                }
            }
            11 => {
                let (v, kind) = secret(&mut r);
                Sample {
                    text: fill(&v),
                    values: vec![exp(kind, &v)],
                }
            }
            12 => {
                let d = 1 + r.below(28);
                let m = 1 + r.below(12);
                let y = 1950 + r.below(60);
                let v = format!("{d:02}/{m:02}/{y}");
                Sample {
                    text: format!(
                        "Patient {} {}, date of birth {v}, room 12.",
                        r.pick(FIRST),
                        r.pick(LAST)
                    ),
                    values: vec![exp("dob", &v)],
                }
            }
            _ => Sample {
                text: r.pick(NEGATIVES).to_string(),
                values: vec![],
            },
        };
        out.push(sample);
    }
    out
}

fn exp(kind: &str, value: &str) -> Expected {
    Expected {
        kind: kind.into(),
        value: value.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::{card_valid, egypt_id_valid, iban_valid};

    #[test]
    fn generator_makes_what_it_says() {
        let mut r = Rng(7);
        for _ in 0..200 {
            assert!(card_valid(&card(&mut r, true)));
            assert!(!card_valid(&card(&mut r, false)));
            let v: String = iban(&mut r, true).split_whitespace().collect();
            assert!(iban_valid(&v), "{v}");
            let v: String = iban(&mut r, false).split_whitespace().collect();
            assert!(!iban_valid(&v), "{v}");
            assert!(egypt_id_valid(&egypt_id(&mut r, true)));
            assert!(!egypt_id_valid(&egypt_id(&mut r, false)));
        }
    }
}

//! Keeps personal data out of logs (design invariant 10).
//!
//! Card numbers and the 18-character citizen ID number (which is also the social-security
//! number) can appear in paths (`/card/v1/cards/{card_no}`), query strings and error messages.
//! Every string that reaches a log line or an error body from the request passes through
//! [`mask`]. The rule is deliberately broad: any run of 9 or more digits (optionally ending in
//! the ID check character `X`), and the 9-character social-security card number (one letter and
//! eight digits), keep their last 4 characters and lose the rest. Masking a long timestamp too is
//! a fair price for never logging an ID number.

use std::borrow::Cow;

/// Replaces personal identifiers in `s` with a masked form like `**************1234`.
pub fn mask(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    if !needs_mask(bytes) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(len) = identifier_at(bytes, i) {
            for _ in 0..len - 4 {
                out.push('*');
            }
            out.push_str(&s[i + len - 4..i + len]);
            i += len;
        } else {
            // Copy one UTF-8 character.
            let ch_len = s[i..].chars().next().map(char::len_utf8).unwrap_or(1);
            out.push_str(&s[i..i + ch_len]);
            i += ch_len;
        }
    }
    Cow::Owned(out)
}

/// Masks a card number for a receipt or an operator view: first 3, last 4.
pub fn mask_card(card: &str) -> String {
    let chars: Vec<char> = card.chars().collect();
    if chars.len() <= 7 {
        return "*".repeat(chars.len());
    }
    let mut out: String = chars[..3].iter().collect();
    out.push_str(&"*".repeat(chars.len() - 7));
    out.extend(&chars[chars.len() - 4..]);
    out
}

fn needs_mask(bytes: &[u8]) -> bool {
    let mut run = 0;
    for &b in bytes {
        if b.is_ascii_digit() {
            run += 1;
            if run >= 8 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

fn is_boundary(bytes: &[u8], i: usize) -> bool {
    i == 0 || !bytes[i - 1].is_ascii_alphanumeric()
}

/// Length of a personal identifier starting at `i`, if one does.
fn identifier_at(bytes: &[u8], i: usize) -> Option<usize> {
    if !is_boundary(bytes, i) {
        return None;
    }
    let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits >= 9 {
        let x = bytes.get(i + digits).is_some_and(|b| *b == b'X' || *b == b'x');
        return Some(if x { digits + 1 } else { digits });
    }
    // Social-security card number: one letter then exactly eight digits.
    if bytes[i].is_ascii_alphabetic() {
        let d = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        let end_ok = bytes.get(i + 1 + d).is_none_or(|b| !b.is_ascii_alphanumeric());
        if d == 8 && end_ok {
            return Some(9);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_id_numbers_card_numbers_and_long_digit_runs() {
        assert_eq!(mask("/card/v1/cards/110101199003071234"), "/card/v1/cards/**************1234");
        assert_eq!(mask("id=11010119900307123X&x=1"), "id=**************123X&x=1");
        assert_eq!(mask("card A12345678 lost"), "card *****5678 lost");
        assert_eq!(mask("6222021234567890123"), "***************0123");
        assert_eq!(mask("/payment/v1/settlements"), "/payment/v1/settlements");
        assert_eq!(mask("amount 50000 fen"), "amount 50000 fen");
        assert!(matches!(mask("nothing here"), Cow::Borrowed(_)));
        assert_eq!(mask("中文 110101199003071234"), "中文 **************1234");
    }

    #[test]
    fn mask_card_keeps_ends() {
        assert_eq!(mask_card("110101199003071234"), "110***********1234");
        assert_eq!(mask_card("123"), "***");
    }
}

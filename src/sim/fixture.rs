//! The simulated world: which cards exist, their status, PIN and remaining fund balance.
//!
//! The rules are fixed and documented so load generators and tests can rely on them without
//! seeding any data. They do not depend on `--seed` (which drives latency, faults and tokens).
//!
//! * A card number is the holder's 18-character citizen ID number: 17 digits, then a digit or
//!   `X` (a lowercase `x` is accepted and read as `X`). The check character is not verified, so
//!   a generator may use any 17 digits.
//! * Every card exists. Its status comes from the 3-digit sequence code (characters 15-17):
//!   `999` → `lost`, `998` → `frozen`, anything else → `active`. `POST /card/v1/cards/{no}/loss`
//!   marks a card lost for the life of the process (shared by the services of one process).
//! * The correct PIN of every card is [`PIN`] (`123456`).
//! * The fund pays [`FUND_SHARE_PERCENT`]% of a settlement, rounded down to the fen; the holder
//!   pays the rest, so `fund_paid_fen + self_paid_fen == amount_fen` exactly. Each card starts
//!   with a remaining fund balance of [`FUND_BALANCE_FEN`], or [`LOW_FUND_BALANCE_FEN`] when the
//!   sequence code is `997`; a settlement whose fund share exceeds what remains is declined.
//!   Balances live in memory: a restarted simulator starts every card afresh (the ledger holds no
//!   full card number to rebuild them from, on purpose).
//!
//! Examples: active `110101199003071234`, lost `11010119900307999X`, frozen `110101199003079985`,
//! low balance `110101199003079971`.

use std::collections::HashMap;
use std::sync::Mutex;

/// The correct PIN of every simulated card.
pub const PIN: &str = "123456";
/// Share of each settlement the fund pays, in percent (rounded down to the fen).
pub const FUND_SHARE_PERCENT: i64 = 70;
/// Starting fund balance of an ordinary card: 10 million yuan, so that even the hottest card of a
/// skewed load test (about 95,000 settlements of 300 yuan) never runs dry and declines muddy the
/// results. Declines for balance are what the `997` cards are for.
pub const FUND_BALANCE_FEN: i64 = 1_000_000_000;
/// Starting fund balance of a card whose sequence code is `997`: 100 yuan.
pub const LOW_FUND_BALANCE_FEN: i64 = 10_000;
/// Largest amount one settlement may carry: 1,000,000 yuan (anything above is a malformed request).
pub const MAX_AMOUNT_FEN: i64 = 100_000_000;

/// Example card numbers, one per fixture rule (for the demo and the docs).
pub const EXAMPLE_ACTIVE: &str = "110101199003071234";
pub const EXAMPLE_LOST: &str = "11010119900307999X";
pub const EXAMPLE_FROZEN: &str = "110101199003079985";
pub const EXAMPLE_LOW_BALANCE: &str = "110101199003079971";

/// A card's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardStatus {
    Active,
    Lost,
    Frozen,
}

impl CardStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CardStatus::Active => "active",
            CardStatus::Lost => "lost",
            CardStatus::Frozen => "frozen",
        }
    }
}

/// Normalises and checks a card number; `None` when it is not 17 digits plus a digit or `X`.
pub fn parse_card_no(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return None;
    }
    match b[17] {
        b'0'..=b'9' | b'X' => Some(s.to_string()),
        b'x' => Some(format!("{}X", &s[..17])),
        _ => None,
    }
}

fn sequence_code(card: &str) -> &str {
    card.get(14..17).unwrap_or("")
}

/// The status a card has before anyone reports it lost.
pub fn initial_status(card: &str) -> CardStatus {
    match sequence_code(card) {
        "999" => CardStatus::Lost,
        "998" => CardStatus::Frozen,
        _ => CardStatus::Active,
    }
}

/// The fund balance a card starts with.
pub fn initial_balance(card: &str) -> i64 {
    if sequence_code(card) == "997" {
        LOW_FUND_BALANCE_FEN
    } else {
        FUND_BALANCE_FEN
    }
}

/// The fund's share of `amount_fen` (integer arithmetic, rounded down).
pub fn fund_share(amount_fen: i64) -> i64 {
    amount_fen / 100 * FUND_SHARE_PERCENT + amount_fen % 100 * FUND_SHARE_PERCENT / 100
}

/// Why a settlement is declined (402).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    CardLost,
    CardFrozen,
    InsufficientFundBalance,
}

impl Decline {
    pub fn reason(self) -> &'static str {
        match self {
            Decline::CardLost => "card_lost",
            Decline::CardFrozen => "card_frozen",
            Decline::InsufficientFundBalance => "insufficient_fund_balance",
        }
    }
}

/// Mutable card state shared by the services of one process.
#[derive(Debug, Default)]
pub struct World {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    lost: std::collections::HashSet<String>,
    /// Fund share spent per card since start.
    spent: HashMap<String, i64>,
}

impl World {
    pub fn new() -> World {
        World::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another request panicked mid-update of plain counters.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The card's current status.
    pub fn status(&self, card: &str) -> CardStatus {
        if self.lock().lost.contains(card) {
            CardStatus::Lost
        } else {
            initial_status(card)
        }
    }

    /// Reports the card lost (idempotent).
    pub fn report_lost(&self, card: &str) {
        self.lock().lost.insert(card.to_string());
    }

    /// The card's remaining fund balance.
    pub fn balance(&self, card: &str) -> i64 {
        initial_balance(card) - self.lock().spent.get(card).copied().unwrap_or(0)
    }

    /// Checks a settlement and, when it can go ahead, reserves the fund share. Returns the fund
    /// share; undo with [`World::release`] if the settlement is not recorded after all.
    pub fn reserve(&self, card: &str, amount_fen: i64) -> Result<i64, Decline> {
        let mut inner = self.lock();
        let status = if inner.lost.contains(card) { CardStatus::Lost } else { initial_status(card) };
        match status {
            CardStatus::Lost => return Err(Decline::CardLost),
            CardStatus::Frozen => return Err(Decline::CardFrozen),
            CardStatus::Active => {}
        }
        let fund = fund_share(amount_fen);
        let spent = inner.spent.get(card).copied().unwrap_or(0);
        if fund > initial_balance(card) - spent {
            return Err(Decline::InsufficientFundBalance);
        }
        inner.spent.insert(card.to_string(), spent + fund);
        Ok(fund)
    }

    /// Gives back a reservation.
    pub fn release(&self, card: &str, fund_fen: i64) {
        if let Some(spent) = self.lock().spent.get_mut(card) {
            *spent -= fund_fen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_and_rules() {
        assert_eq!(parse_card_no("11010119900307999x").as_deref(), Some(EXAMPLE_LOST));
        assert!(parse_card_no("1101011990030712345").is_none());
        assert!(parse_card_no("11010119900307123Y").is_none());
        assert!(parse_card_no("1101011990030712３4").is_none());
        assert_eq!(initial_status(EXAMPLE_ACTIVE), CardStatus::Active);
        assert_eq!(initial_status(EXAMPLE_LOST), CardStatus::Lost);
        assert_eq!(initial_status(EXAMPLE_FROZEN), CardStatus::Frozen);
        assert_eq!(initial_balance(EXAMPLE_LOW_BALANCE), LOW_FUND_BALANCE_FEN);
    }

    #[test]
    fn fund_share_is_exact_integer_arithmetic() {
        for amount in [0, 1, 99, 100, 101, 12_345, 99_999_999, MAX_AMOUNT_FEN] {
            let fund = fund_share(amount);
            assert_eq!(fund, (i128::from(amount) * 70 / 100) as i64, "{amount}");
            assert!(fund <= amount);
        }
    }

    #[test]
    fn balance_runs_out_and_release_gives_it_back() {
        let w = World::new();
        assert_eq!(w.reserve(EXAMPLE_LOW_BALANCE, 10_000), Ok(7_000));
        assert_eq!(w.reserve(EXAMPLE_LOW_BALANCE, 10_000), Err(Decline::InsufficientFundBalance));
        w.release(EXAMPLE_LOW_BALANCE, 7_000);
        assert_eq!(w.balance(EXAMPLE_LOW_BALANCE), LOW_FUND_BALANCE_FEN);
        assert_eq!(w.reserve(EXAMPLE_FROZEN, 1), Err(Decline::CardFrozen));
        w.report_lost(EXAMPLE_ACTIVE);
        assert_eq!(w.reserve(EXAMPLE_ACTIVE, 1), Err(Decline::CardLost));
    }
}

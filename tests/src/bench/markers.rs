//! Markers a scenario prints on the nested console, and the verdict they add up to.
//!
//! Inside, `tests/scenarios/lib.sh` prints one marker per line:
//! `HANGAR-STEP: <step>` when a step begins, `HANGAR-VALUE: <key>=<value>` for
//! a measurement, `HANGAR-FAIL: <step>: <reason>` and `HANGAR-PASS: <scenario>`.

use std::path::PathBuf;
use std::time::Duration;

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail {
        step: String,
        reason: String,
    },
    /// The hard timeout fired; `step` is the last one that began.
    Timeout {
        step: String,
    },
    /// The machine stopped without a verdict (kernel panic, init died).
    NoVerdict {
        step: String,
    },
}

/// Everything a test needs to judge and explain a scenario.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub scenario: String,
    pub outcome: Outcome,
    pub values: Vec<(String, String)>,
    pub log: PathBuf,
    pub log_tail: String,
    /// From starting the emulator to the scenario's first line (outer boot).
    pub outer_boot: Option<Duration>,
    /// From starting the emulator to the verdict.
    pub total: Duration,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Pass
    }

    /// The first value recorded under `key`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A human summary: the outcome, the failing step and the log tail.
    pub fn explain(&self) -> String {
        let what = match &self.outcome {
            Outcome::Pass => "passed".to_string(),
            Outcome::Fail { step, reason } => format!("FAILED at step `{step}`: {reason}"),
            Outcome::Timeout { step } => format!("TIMED OUT during step `{step}`"),
            Outcome::NoVerdict { step } => {
                format!("machine stopped without a verdict during step `{step}`")
            }
        };
        format!(
            "scenario `{}` {what} after {:.1}s\nlog: {}\n--- log tail ---\n{}",
            self.scenario,
            self.total.as_secs_f64(),
            self.log.display(),
            self.log_tail
        )
    }
}

/// One parsed console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    Scenario(String),
    Step(String),
    Value(String, String),
    Fail(String, String),
    Pass(String),
}

/// Parses a console line; markers may be preceded by other output on the line.
pub fn parse(line: &str) -> Option<Marker> {
    let at = line.find("HANGAR-")?;
    let rest = &line[at + "HANGAR-".len()..];
    let (kind, body) = rest.split_once(": ")?;
    let body = body.trim();
    match kind {
        "SCENARIO" => Some(Marker::Scenario(body.to_string())),
        "STEP" => Some(Marker::Step(body.to_string())),
        "VALUE" => {
            let (k, v) = body.split_once('=')?;
            Some(Marker::Value(k.to_string(), v.to_string()))
        }
        "FAIL" => {
            let (step, reason) = body.split_once(": ").unwrap_or((body, ""));
            Some(Marker::Fail(step.to_string(), reason.to_string()))
        }
        "PASS" => Some(Marker::Pass(body.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_marker_kind() {
        assert_eq!(
            parse("HANGAR-STEP: boot"),
            Some(Marker::Step("boot".into()))
        );
        assert_eq!(
            parse("[  1.0] HANGAR-VALUE: mmio_addr=0x09000000\r"),
            Some(Marker::Value("mmio_addr".into(), "0x09000000".into()))
        );
        assert_eq!(
            parse("HANGAR-FAIL: selftest: exit 1"),
            Some(Marker::Fail("selftest".into(), "exit 1".into()))
        );
        assert_eq!(
            parse("HANGAR-PASS: kvm-mmio"),
            Some(Marker::Pass("kvm-mmio".into()))
        );
        assert_eq!(parse("plain console text"), None);
        assert_eq!(parse("HANGAR-BOGUS: x"), None);
    }
}

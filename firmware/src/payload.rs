//! Boot-loop payloads: UEFI shell scripts that make every boot do what once
//! exposed the lost wake-up (many small writes to the variable store through CFI
//! flash, i.e. synchronous block writes in nested polls) and then reset, so the
//! VMM's boot-loop reproducer can count boots.

/// The vendor GUID of every variable the payload writes.
pub const PAYLOAD_GUID: &str = "4e8a1c2b-1d3f-4a5b-9c6d-7e8f90a1b2c3";

/// A `startup.nsh` that writes `variables` non-volatile variables (each a
/// flash program of the variable store) and then resets the machine.
pub fn bootloop_startup_nsh(variables: u32) -> String {
    let mut script = String::from("echo HANGAR-BOOTLOOP: payload running\r\n");
    for n in 0..variables {
        script.push_str(&format!(
            "setvar HangarLoop{n} -guid {PAYLOAD_GUID} -nv -bs ={n:08x}\r\n"
        ));
    }
    script.push_str("echo HANGAR-BOOTLOOP: resetting\r\nreset\r\n");
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_writes_each_variable_then_resets() {
        let script = bootloop_startup_nsh(3);
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[1].starts_with("setvar HangarLoop0 -guid "));
        assert!(lines[3].ends_with("=00000002"));
        assert_eq!(lines[5], "reset");
        assert!(script.lines().all(|l| !l.contains("reset -s")));
    }
}

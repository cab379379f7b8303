//! The kernel's table of mounts, `/proc/self/mountinfo`, read for where shardfs is mounted.

use anyhow::Context;

/// One mount: where it is, its filesystem type (`fuse.shardfs` for ours) and its source
/// (for shardfs, the metad address it was mounted from).
pub struct Mounted {
    pub point: String,
    pub kind: String,
    pub source: String,
}

/// Every mount the calling process sees.
pub fn mounts() -> anyhow::Result<Vec<Mounted>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    Ok(table.lines().filter_map(parse).collect())
}

/// A line's mount point (field 5) and, after the `-` separator, its type and source.
fn parse(line: &str) -> Option<Mounted> {
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    let (point, kind, source) = (fields.get(4)?, fields.get(dash + 1)?, fields.get(dash + 2)?);
    Some(Mounted { point: unescape(point), kind: unescape(kind), source: unescape(source) })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_are_undone() {
        assert_eq!(super::unescape(r"/mnt/with\040space\134x"), r"/mnt/with space\x");
        assert_eq!(super::unescape("127.0.0.1:7000"), "127.0.0.1:7000");
    }

    #[test]
    fn a_line_gives_point_type_and_source() {
        let line = r"52 30 0:45 / /mnt/a\040b rw,nosuid - fuse.shardfs 127.0.0.1:7000 rw";
        let mounted = super::parse(line).unwrap();
        assert_eq!(mounted.point, "/mnt/a b");
        assert_eq!(
            (mounted.kind.as_str(), mounted.source.as_str()),
            ("fuse.shardfs", "127.0.0.1:7000")
        );
    }
}

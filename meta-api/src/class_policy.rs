//! Which storage class a file's data is written in and where it comes to rest: the
//! volume's hot and cold classes, unless the file says otherwise in its
//! [`CLASS_XATTR`], which what is created in a directory inherits from it.
//!
//! | xattr value | written in | after the lifecycle age |
//! | --- | --- | --- |
//! | (none) | the hot class | the cold class |
//! | `hot` | the hot class | stays (pinned hot) |
//! | `cold` | the cold class | stays |
//! | a class, as `lrc(6,2,2)` | that class | stays |

use std::fmt;
use std::str::FromStr;

use shardfs_chunk_api::Encoding;

/// The extended attribute holding a file's or directory's class policy. In the `user.`
/// namespace, so the owner may set it and `cp -a` and `rsync -X` carry it along.
pub const CLASS_XATTR: &[u8] = b"user.shardfs.class";

/// What a [`CLASS_XATTR`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassPolicy {
    /// Kept in the volume's hot class: never moved to the cold one.
    Hot,
    /// Written straight to the volume's cold class.
    Cold,
    /// Written in, and kept in, this class.
    Fixed(Encoding),
}

impl ClassPolicy {
    /// The class new data of a file with `policy` (`None`: no xattr) is written in.
    pub fn write_class(policy: Option<ClassPolicy>, hot: Encoding, cold: Encoding) -> Encoding {
        match policy {
            None | Some(ClassPolicy::Hot) => hot,
            Some(ClassPolicy::Cold) => cold,
            Some(ClassPolicy::Fixed(class)) => class,
        }
    }

    /// The class data of a file with `policy` comes to rest in once it is old enough.
    pub fn resting_class(policy: Option<ClassPolicy>, hot: Encoding, cold: Encoding) -> Encoding {
        match policy {
            None | Some(ClassPolicy::Cold) => cold,
            Some(ClassPolicy::Hot) => hot,
            Some(ClassPolicy::Fixed(class)) => class,
        }
    }

    /// The policy an xattr value states; `None` if it states none (as a damaged value
    /// would: such a file is treated as having no policy).
    pub fn from_xattr(value: &[u8]) -> Option<ClassPolicy> {
        std::str::from_utf8(value).ok()?.parse().ok()
    }
}

impl fmt::Display for ClassPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassPolicy::Hot => write!(f, "hot"),
            ClassPolicy::Cold => write!(f, "cold"),
            ClassPolicy::Fixed(class) => write!(f, "{class}"),
        }
    }
}

impl FromStr for ClassPolicy {
    type Err = shardfs_chunk_api::codec::CodecError;

    /// `hot`, `cold`, or a class as `replicas(3)`, `rs(4,2)`, `lrc(6,2,2)`.
    fn from_str(s: &str) -> Result<ClassPolicy, Self::Err> {
        match s.trim() {
            "hot" => Ok(ClassPolicy::Hot),
            "cold" => Ok(ClassPolicy::Cold),
            class => class.parse().map(ClassPolicy::Fixed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_decide_the_classes() {
        let (hot, cold) = (Encoding::Replicas { n: 3 }, Encoding::Rs { k: 4, m: 2 });
        let lrc = Encoding::Lrc { k: 6, l: 2, g: 2 };
        for (text, write, rest) in [
            (None, hot, cold),
            (Some("hot"), hot, hot),
            (Some("cold"), cold, cold),
            (Some("lrc(6,2,2)"), lrc, lrc),
        ] {
            let policy = text.map(|t| t.parse::<ClassPolicy>().unwrap());
            assert_eq!(policy.map(|p| p.to_string()).as_deref(), text);
            assert_eq!(ClassPolicy::write_class(policy, hot, cold), write, "{text:?}");
            assert_eq!(ClassPolicy::resting_class(policy, hot, cold), rest, "{text:?}");
        }
        assert!("warm".parse::<ClassPolicy>().is_err());
        assert!("rs(0,2)".parse::<ClassPolicy>().is_err());
        assert_eq!(ClassPolicy::from_xattr(b"\xff"), None);
    }
}

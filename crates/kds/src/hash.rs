//! Kuma's names for synced resources: the display name plus a suffix hashed
//! from the mesh, the display name and where the resource came from, so
//! copies from different zones never collide.

/// The alphabet Kubernetes' `rand.SafeEncodeString` maps hex digits into.
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Room left for `-` and the 16-character suffix in a 253-character name.
const MAX_BASE: usize = 236;

/// `<display name>-<16 characters>`: FNV-1a (64 bit) over the mesh, the
/// display name and `extras` concatenated, as hex, each digit mapped into
/// [`ALPHABET`]. `extras` are the zone, then the Kubernetes namespace, when
/// the resource has them.
pub fn hashed_name(mesh: &str, display_name: &str, extras: &[&str]) -> String {
    let mut hash = Fnv1a::default();
    hash.write(mesh.as_bytes());
    hash.write(display_name.as_bytes());
    extras.iter().for_each(|e| hash.write(e.as_bytes()));
    let hash = hash.0;
    let suffix: String =
        format!("{hash:016x}").bytes().map(|c| ALPHABET[usize::from(c) % ALPHABET.len()] as char).collect();
    let mut base = display_name;
    if base.len() > MAX_BASE {
        let mut end = MAX_BASE;
        while !base.is_char_boundary(end) {
            end -= 1;
        }
        base = &base[..end];
    }
    format!("{base}-{suffix}")
}

/// FNV-1a, 64 bit: Kuma's hash for names, and Tern's for content versions
/// (stable across processes and releases, unlike std's hasher).
pub struct Fnv1a(pub u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hashed_name;

    #[test]
    fn kumas_test_vectors() {
        assert_eq!(hashed_name("", "foo", &[]), "foo-zxw6c95d42zfz9cc");
        assert_eq!(hashed_name("", "foo", &["zone-1", "custom-ns"]), "foo-696vzv497z4cv4f4");
        assert_eq!(
            hashed_name("default", "aatimeout-1", &["my-zone", "kong-mesh-system"]),
            "aatimeout-1-82vzd567626w9bcf"
        );
    }

    #[test]
    fn long_names_are_cut_to_fit() {
        let name = hashed_name("default", &"a".repeat(300), &[]);
        assert_eq!(name.len(), 236 + 1 + 16);
    }
}

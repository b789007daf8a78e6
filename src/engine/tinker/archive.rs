//! A Tinker server's sampler weights as it hands them out: a tar archive (gzipped on SkyRL,
//! plain or gzipped on hosted Tinker, whose SDK opens either) of a PEFT adapter directory.
//! Only regular files with plain names are read — an entry with a path, a link or `..` is
//! refused rather than written anywhere — and the archive must hold an adapter.

use std::io::Read;

/// Largest archive file read (a rank-32 adapter of a 70B model is a few hundred MB).
const MAX_FILE: u64 = 8 << 30;

/// The files a PEFT adapter directory needs.
pub const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// The archive's files, by name.
pub fn unpack(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let gzipped = bytes.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read + '_> =
        if gzipped { Box::new(flate2::read::GzDecoder::new(bytes)) } else { Box::new(bytes) };
    let mut archive = tar::Archive::new(reader);
    let mut files = Vec::new();
    let entries = archive.entries().map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("a damaged tar archive: {e}"))?;
        let kind = entry.header().entry_type();
        let path = entry.path().map_err(|e| format!("an entry without a path: {e}"))?;
        let name =
            path.to_string_lossy().trim_start_matches("./").trim_start_matches('/').to_string();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(format!("the entry `{name}` is not a regular file (a link or a device)"));
        }
        if name.is_empty() || name.contains('/') || name.contains('\\') || name == ".." {
            return Err(format!("the entry `{name}` is not a plain file name"));
        }
        let size = entry.header().size().map_err(|e| e.to_string())?;
        if size > MAX_FILE {
            return Err(format!("the entry `{name}` is {size} bytes"));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut data).map_err(|e| format!("reading `{name}`: {e}"))?;
        files.push((name, data));
    }
    for needed in ADAPTER_FILES {
        if !files.iter().any(|(n, _)| n == needed) {
            let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "the archive holds no PEFT adapter: no `{needed}` among [{}]",
                names.join(", ")
            ));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])], root_dir: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        if root_dir {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o700);
            b.append_data(&mut h, "./", std::io::empty()).unwrap();
        }
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_gzipped_or_plain_adapter_archive_unpacks_to_its_files() {
        let tar =
            archive(&[("adapter_config.json", b"{}"), ("adapter_model.safetensors", b"xy")], true);
        for bytes in [tar.clone(), gzip(&tar)] {
            let files = unpack(&bytes).unwrap();
            assert_eq!(
                files,
                vec![
                    ("adapter_config.json".to_string(), b"{}".to_vec()),
                    ("adapter_model.safetensors".to_string(), b"xy".to_vec())
                ]
            );
        }
    }

    #[test]
    fn an_archive_without_an_adapter_or_with_a_path_is_refused() {
        let e = unpack(&archive(&[("adapter_config.json", b"{}")], false)).unwrap_err();
        assert!(e.contains("no `adapter_model.safetensors`"), "{e}");
        let e = unpack(&archive(&[("sub/adapter_config.json", b"{}")], false)).unwrap_err();
        assert!(e.contains("not a plain file name"), "{e}");
        let e = unpack(b"not an archive at all, and longer than a block? no").unwrap_err();
        assert!(e.contains("tar"), "{e}");
    }
}

//! A checkpoint directory as it comes from the hub: `config.json`, `model.safetensors` or
//! shards listed in `model.safetensors.index.json`, `tokenizer.json`, `preprocessor_config.json`.
//!
//! Everything is checked before any weight is mapped, so a damaged download is reported by file name
//! and cause rather than as a panic deep in a forward pass.

use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The files of a hub checkpoint directory, checked; what the weights mean is the model family's.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// The text of `config.json`.
    pub config_text: String,
    pub weight_files: Vec<PathBuf>,
    /// Every tensor name across the weight files.
    pub tensor_names: BTreeSet<String>,
    pub tokenizer_file: PathBuf,
    /// Absent in some conversions; the family's defaults apply then.
    pub preprocessor_file: Option<PathBuf>,
    /// `eos_token_id` from `generation_config.json` when present.
    pub eos_token_ids: Vec<u32>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(dir, "model directory not found (expected a hub checkpoint directory)"));
        }
        let config_path = dir.join("config.json");
        let config_text = read_to_string(&config_path)?;
        let weight_files = weight_files(dir)?;
        let mut tensor_names = BTreeSet::new();
        let mut first_file: BTreeMap<String, &Path> = BTreeMap::new();
        for f in &weight_files {
            for name in safetensors_names(f)? {
                if let Some(other) = first_file.insert(name.clone(), f) {
                    return Err(Error::checkpoint(
                        f,
                        format!("tensor {name} is also in {}: which copy is meant is ambiguous", other.display()),
                    ));
                }
                tensor_names.insert(name);
            }
        }
        let tokenizer_file = dir.join("tokenizer.json");
        if !tokenizer_file.is_file() {
            return Err(Error::io(&tokenizer_file, "not found (the fast-tokenizer file is required)"));
        }
        let preprocessor_file = Some(dir.join("preprocessor_config.json")).filter(|p| p.is_file());
        let eos_token_ids = generation_eos(&dir.join("generation_config.json"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config_path,
            config_text,
            weight_files,
            tensor_names,
            tokenizer_file,
            preprocessor_file,
            eos_token_ids,
        })
    }

    /// The weights in `dtype` on `device`, each tensor read from its file when a layer asks for it.
    ///
    /// Read, not memory-mapped: a mapped file's pages stay resident next to the converted copies (an f16
    /// checkpoint run in f32 would peak at 1.5× its weights, a bf16 one run in bf16 at 2×); read tensor
    /// by tensor, the process holds each weight once plus one tensor in flight.
    pub fn var_builder(
        &self,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<candle_nn::VarBuilder<'static>> {
        let mut tensors = BTreeMap::new();
        for (file, path) in self.weight_files.iter().enumerate() {
            for (name, info) in tensor_infos(path)? {
                tensors.insert(name, (file, info));
            }
        }
        let backend = ReadBackend { files: self.weight_files.clone(), tensors };
        Ok(candle_nn::VarBuilder::from_backend(Box::new(backend), dtype, device.clone()))
    }
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
struct TensorInfo {
    dtype: candle_core::DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// The tensors of a safetensors file, from its header (checked by [`Checkpoint::open`] already).
fn tensor_infos(path: &Path) -> Result<Vec<(String, TensorInfo)>> {
    use std::io::Read;
    let bad = |msg: String| Error::checkpoint(path, msg);
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut prefix = [0u8; 8];
    f.read_exact(&mut prefix).map_err(|e| Error::io(path, e))?;
    let header_len = declared_header_len(&prefix, file_len, path)?;
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    #[derive(serde::Deserialize)]
    struct Entry {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: (u64, u64),
    }
    let mut entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("corrupt safetensors header: {e}")))?;
    entries.remove("__metadata__");
    let data_start = 8 + header_len;
    entries
        .into_iter()
        .map(|(name, v)| {
            let e: Entry = serde_json::from_value(v).map_err(|e| bad(format!("tensor {name}: {e}")))?;
            let dtype = match e.dtype.as_str() {
                "F32" => candle_core::DType::F32,
                "F16" => candle_core::DType::F16,
                "BF16" => candle_core::DType::BF16,
                "F64" => candle_core::DType::F64,
                "I64" => candle_core::DType::I64,
                "U32" => candle_core::DType::U32,
                "U8" | "BOOL" => candle_core::DType::U8,
                other => return Err(bad(format!("tensor {name} has unsupported dtype {other}"))),
            };
            let elems = e.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            let (start, end) = (data_start + e.data_offsets.0, data_start + e.data_offsets.1);
            if elems.and_then(|n| n.checked_mul(dtype.size_in_bytes() as u64)) != Some(end.saturating_sub(start))
                || end > file_len
            {
                return Err(bad(format!(
                    "tensor {name}: shape {:?} does not match its {} bytes",
                    e.shape,
                    end - start
                )));
            }
            Ok((name, TensorInfo { dtype, shape: e.shape, start, end }))
        })
        .collect()
}

/// A [`candle_nn::var_builder::SimpleBackend`] reading each tensor from its file on request.
struct ReadBackend {
    files: Vec<PathBuf>,
    tensors: BTreeMap<String, (usize, TensorInfo)>,
}

impl ReadBackend {
    fn read(
        &self,
        name: &str,
        dtype: candle_core::DType,
        dev: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        use std::io::{Read, Seek, SeekFrom};
        let (file, info) = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() }.bt())?;
        let path = &self.files[*file];
        let io =
            |e: std::io::Error| candle_core::Error::Msg(format!("{}: cannot read tensor {name}: {e}", path.display()));
        let mut f = std::fs::File::open(path).map_err(io)?;
        f.seek(SeekFrom::Start(info.start)).map_err(io)?;
        let shape = info.shape.as_slice();
        let t = match info.dtype {
            candle_core::DType::F32 => read_values::<f32>(&mut f, shape),
            candle_core::DType::BF16 => read_values::<half::bf16>(&mut f, shape),
            candle_core::DType::F16 => read_values::<half::f16>(&mut f, shape),
            other => {
                let mut bytes = vec![0u8; (info.end - info.start) as usize];
                f.read_exact(&mut bytes).map_err(io)?;
                return candle_core::Tensor::from_raw_buffer(&bytes, other, shape, &candle_core::Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(dev);
            }
        }
        .map_err(io)?;
        t.to_dtype(dtype)?.to_device(dev)
    }
}

/// The next `shape`'s worth of little-endian `T`s of `f`, read straight into the tensor's buffer (no
/// second copy of the bytes: a large tensor in flight costs its own size once).
fn read_values<T: candle_core::WithDType>(
    f: &mut std::fs::File,
    shape: &[usize],
) -> std::io::Result<candle_core::Tensor> {
    use std::io::Read;
    let n: usize = shape.iter().product();
    let mut values = vec![T::zero(); n];
    // SAFETY: plain numbers viewed as their bytes, to be overwritten; safetensors stores little-endian
    // values, which this target's are (checked below).
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(values.as_slice()))
    };
    f.read_exact(bytes)?;
    candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).map_err(std::io::Error::other)
}

#[cfg(not(target_endian = "little"))]
compile_error!("safetensors checkpoints are little-endian; reading them on this target needs byte swaps");

impl candle_nn::var_builder::SimpleBackend for ReadBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: candle_core::DType,
        dev: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let t = self.read(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: candle_core::DType,
        dev: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.read(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// The shard list from the index when there is one, else the single `model.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let parsed: Index = serde_json::from_str(&read_to_string(&index)?)
            .map_err(|e| Error::config(&index, format!("malformed shard index (expected a `weight_map`): {e}")))?;
        let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
        return shards
            .into_iter()
            .map(|s| {
                // A shard must be a file of this folder: no absolute paths, no `..`.
                let plain = Path::new(s).components().all(|c| matches!(c, std::path::Component::Normal(_)));
                if !plain {
                    return Err(Error::config(&index, format!("shard file name {s:?} leaves the model folder")));
                }
                let p = dir.join(s);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::io(&p, format!("shard listed in {} is missing", index.display())))
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::io(dir, "no weights: expected model.safetensors or model.safetensors.index.json"))
}

/// The largest header accepted (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads and checks a safetensors header: its length, its JSON, and that every tensor's bytes lie
/// inside the file (a truncated download fails here, by name).
pub fn safetensors_names(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    // Only the length prefix and the header it declares are read; the data section can be gigabytes.
    let mut head = vec![0u8; 8];
    if f.read_exact(&mut head).is_ok() {
        let header_len = declared_header_len(&head, file_len, path)?;
        head.resize(8 + header_len as usize, 0);
        f.read_exact(&mut head[8..]).map_err(|e| Error::io(path, e))?;
    } else {
        // Reported below as too short for a header.
        head.clear();
    }
    check_safetensors_header(&head, file_len, path)
}

/// The checks of [`safetensors_names`] on the file's first bytes (at least the length prefix and the
/// header it declares; the whole file will do) and its length; `path` names the file in errors.
pub fn check_safetensors_header(bytes: &[u8], file_len: u64, path: &Path) -> Result<Vec<String>> {
    let bad = |msg: String| Error::checkpoint(path, msg);
    let header_len = declared_header_len(bytes, file_len, path)?;
    let header = bytes.get(8..8 + header_len as usize).ok_or_else(|| {
        bad(format!("only {} bytes given of a header that ends at byte {}", bytes.len(), 8 + header_len))
    })?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| bad(format!("corrupt safetensors header (not JSON): {e}")))?;
    let data_len = file_len - 8 - header_len;
    let mut names = Vec::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        // Weights are floats; an integer tensor where a weight belongs would be cast and used silently.
        let dtype = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let is_weight = name.ends_with(".weight") || name.ends_with(".bias") || name.ends_with("embedding");
        if is_weight && !matches!(dtype, "F32" | "F16" | "BF16" | "F64") {
            return Err(bad(format!("tensor {name} has dtype {dtype}; a weight must be F32, F16, BF16 or F64")));
        }
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad(format!("corrupt safetensors header: tensor {name} has no data_offsets")))?;
        if end > data_len {
            return Err(bad(format!(
                "truncated: tensor {name} ends at byte {end} of the data section but the file holds {data_len} \
                 (re-download the file)"
            )));
        }
        names.push(name);
    }
    Ok(names)
}

/// The header length the first 8 bytes declare, checked against the file's length.
fn declared_header_len(bytes: &[u8], file_len: u64, path: &Path) -> Result<u64> {
    let bad = |msg: String| Error::checkpoint(path, msg);
    let prefix = bytes.first_chunk::<8>().filter(|_| file_len >= 8);
    let header_len = u64::from_le_bytes(
        *prefix.ok_or_else(|| bad(format!("not a safetensors file: {file_len} bytes, too short for a header")))?,
    );
    if header_len > file_len - 8 || header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "corrupt safetensors header: declares {header_len} header bytes in a {file_len}-byte file"
        )));
    }
    Ok(header_len)
}

fn generation_eos(path: &Path) -> Result<Vec<u32>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(&read_to_string(path)?)
        .map_err(|e| Error::config(path, format!("malformed JSON: {e}")))?;
    Ok(match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32).collect(),
        _ => Vec::new(),
    })
}

/// Turns a model argument into a directory: a local path as is; with the `hub` feature, a hub id
/// (`org/name`) not present locally is downloaded into the hub cache.
pub fn resolve(model: &str) -> Result<PathBuf> {
    let local = PathBuf::from(model);
    if local.exists() || !looks_like_hub_id(model) {
        return Ok(local);
    }
    download(model)
}

fn looks_like_hub_id(model: &str) -> bool {
    let parts: Vec<&str> = model.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
}

#[cfg(feature = "hub")]
fn download(id: &str) -> Result<PathBuf> {
    let fail = |e: &dyn std::fmt::Display| Error::io(id, format!("cannot download from the hub: {e}"));
    let repo = hf_hub::api::sync::Api::new().map_err(|e| fail(&e))?.model(id.to_string());
    let config = repo.get("config.json").map_err(|e| fail(&e))?;
    for optional in ["preprocessor_config.json", "generation_config.json"] {
        let _ = repo.get(optional);
    }
    repo.get("tokenizer.json").map_err(|e| fail(&e))?;
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = read_to_string(&index)?;
            let parsed: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::config(&index, format!("malformed shard index: {e}")))?;
            let shards: BTreeSet<String> = parsed["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            for s in shards {
                repo.get(&s).map_err(|e| fail(&e))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").map_err(|e| fail(&e))?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(not(feature = "hub"))]
fn download(id: &str) -> Result<PathBuf> {
    Err(Error::io(
        id,
        "no such directory; to download from the hub, build with the `hub` cargo feature (or pass a local checkpoint directory)",
    ))
}

//! The model's exact tokenizer: HF `tokenizer.json`, or rebuilt from GGUF metadata keyed on `tokenizer.ggml.pre`.
//!
//! candle's `TokenizerFromGguf` adds a prefix space for `pre = smollm` ("Hello" → 38699 instead of HF's 19556); the
//! rebuild here uses the pre-tokenizer each `pre` value names in llama.cpp (`llama-vocab.cpp`) and HF's
//! `tokenizer.json` files, and is tested id-for-id against HF transformers.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::TokenId;

/// Llama 3's pre-tokenizer regex (`llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer regex (single digits).
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer plus the special tokens the engine needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<TokenId>,
    eos: Vec<TokenId>,
    /// Prepend BOS to raw prompts ourselves (GGUF `tokenizer.ggml.add_bos_token`); HF tokenizers do it in their
    /// post-processor instead.
    add_bos: bool,
    /// Whether `inner`'s post-processor adds special tokens (HF).
    post_processed: bool,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Rebuilds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path();
        let bad = |msg: String| Error::bad_model(path, msg);
        let model = g.meta_str("tokenizer.ggml.model").unwrap_or("");
        let arch = g.meta_str("general.architecture").unwrap_or("");
        let meta = g.metadata();
        let tokens: Vec<String> = match meta.get("tokenizer.ggml.tokens") {
            Some(Value::Array(v)) => v
                .iter()
                .map(|t| t.to_string().cloned().map_err(|_| bad("tokenizer.ggml.tokens holds a non-string".into())))
                .collect::<Result<_>>()?,
            _ => return Err(bad("metadata `tokenizer.ggml.tokens` is missing".into())),
        };
        match model {
            "gpt2" => {}
            "llama" if arch.starts_with("gemma") => return Self::gemma_from_gguf(g, tokens),
            _ => {
                return Err(Error::unsupported(
                    path,
                    format!(
                        "tokenizer model `{model}` for architecture `{arch}`; rebuilt from GGUF: byte-level BPE \
                         (`gpt2`) and Gemma's SentencePiece — load the HF directory instead"
                    ),
                ))
            }
        }
        let merges: Vec<(String, String)> = match meta.get("tokenizer.ggml.merges") {
            Some(Value::Array(v)) => v
                .iter()
                .map(|m| {
                    let s = m.to_string().map_err(|_| bad("tokenizer.ggml.merges holds a non-string".into()))?;
                    let (a, b) = s.split_once(' ').ok_or_else(|| bad(format!("merge `{s}` has no space")))?;
                    Ok((a.to_string(), b.to_string()))
                })
                .collect::<Result<_>>()?,
            _ => return Err(bad("metadata `tokenizer.ggml.merges` is missing".into())),
        };
        let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
            Some(Value::Array(v)) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        vocab.extend(tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)));
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = g.meta_str("tokenizer.ggml.pre").unwrap_or("default");
        let byte_level = |use_regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
        let split = |re: &str| -> Result<PreTokenizerWrapper> {
            Ok(PreTokenizerWrapper::Split(
                Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false).map_err(tok_err)?,
            ))
        };
        let pre_tokenizer = match pre {
            "smollm" | "starcoder" | "refact" => {
                Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level(true)])
            }
            "gpt2" | "default" | "gpt-2" => Sequence::new(vec![byte_level(true)]),
            "llama-bpe" | "llama3" | "smaug-bpe" => Sequence::new(vec![split(LLAMA3_REGEX)?, byte_level(false)]),
            "qwen2" | "deepseek-r1-qwen" => Sequence::new(vec![split(QWEN2_REGEX)?, byte_level(false)]),
            other => {
                return Err(Error::unsupported(
                    path,
                    format!("tokenizer pre-tokenizer `{other}`; supported: smollm, starcoder, gpt2, llama-bpe, qwen2 — load the HF directory instead"),
                ))
            }
        };
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre_tokenizer)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control (3) and user-defined (4) tokens are matched whole, before pre-tokenization.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner.add_special_tokens(specials).map_err(tok_err)?;
        let id = |key: &str| meta.get(key).and_then(|v| v.to_u32().ok());
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        let add_bos = meta.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
        Ok(Tokenizer { inner, bos, eos, add_bos, post_processed: false })
    }

    /// Gemma's SentencePiece vocabulary (`tokenizer.ggml.model = llama`, no merges in the file) as the BPE
    /// tokenizer transformers builds from the same file (`GemmaTokenizer` via its GGUF converter): tokens made only
    /// of spaces respelled with `▁`, merges recovered from the vocabulary — every split of a token into two tokens,
    /// ordered by the merged token's position in the file, longer left part first — byte fallback, spaces
    /// normalised to `▁`, control tokens special and user-defined ones matched whole. Tested id for id against
    /// transformers on the real Gemma 3 270M file.
    fn gemma_from_gguf(g: &GgufFile, tokens: Vec<String>) -> Result<Self> {
        use std::collections::HashMap;
        use tokenizers::decoders::byte_fallback::ByteFallback;
        use tokenizers::decoders::fuse::Fuse;
        use tokenizers::decoders::sequence::Sequence as DecoderSequence;
        use tokenizers::decoders::DecoderWrapper;
        use tokenizers::normalizers::replace::Replace;
        use tokenizers::NormalizerWrapper;

        let meta = g.metadata();
        let tokens: Vec<String> = tokens
            .into_iter()
            .map(|t| if t.contains(' ') && t.trim().is_empty() { "\u{2581}".repeat(t.chars().count()) } else { t })
            .collect();
        // Python dict semantics: a repeated token keeps its first place in iteration order and its last id.
        let mut id: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
        let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if id.insert(t.as_str(), i as u32).is_none() {
                order.push(t.as_str());
            }
        }
        // (merged token's id, left length, right length) sorts best first: lower id, then longer left, longer right.
        let mut merges: Vec<(u32, usize, usize, &str, &str)> = Vec::new();
        for &t in &order {
            let at = id[t];
            let chars: Vec<usize> = t.char_indices().map(|(i, _)| i).skip(1).collect();
            for &cut in &chars {
                let (l, r) = t.split_at(cut);
                if id.contains_key(l) && id.contains_key(r) {
                    merges.push((at, l.chars().count(), r.chars().count(), l, r));
                }
            }
        }
        merges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        let merges: Vec<(String, String)> = merges.into_iter().map(|m| (m.3.to_string(), m.4.to_string())).collect();
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        vocab.extend(id.iter().map(|(t, &i)| (t.to_string(), i)));
        let unk = meta
            .get("tokenizer.ggml.unknown_token_id")
            .and_then(|v| v.to_u32().ok())
            .and_then(|i| tokens.get(i as usize).cloned())
            .unwrap_or_else(|| "<unk>".to_string());
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .unk_token(unk)
            .fuse_unk(true)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_normalizer(Some(NormalizerWrapper::Replace(Replace::new(" ", "\u{2581}").map_err(tok_err)?)))
            .map_err(tok_err)?;
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Split(
            Split::new(SplitPattern::String(" ".into()), SplitDelimiterBehavior::MergedWithPrevious, false)
                .map_err(tok_err)?,
        )));
        inner.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
            DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(tok_err)?),
            DecoderWrapper::ByteFallback(ByteFallback::new()),
            DecoderWrapper::Fuse(Fuse::new()),
        ]))));
        let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
            Some(Value::Array(v)) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let of_type = |want: i32| -> Vec<&String> {
            tokens.iter().zip(&types).filter(|(_, &t)| t == want).map(|(s, _)| s).collect()
        };
        let control: Vec<AddedToken> = of_type(3).into_iter().map(|s| AddedToken::from(s.clone(), true)).collect();
        inner.add_special_tokens(control).map_err(tok_err)?;
        let user: Vec<AddedToken> =
            of_type(4).into_iter().map(|s| AddedToken::from(s.clone(), false).normalized(false)).collect();
        inner.add_tokens(user).map_err(tok_err)?;
        let token = |key: &str| meta.get(key).and_then(|v| v.to_u32().ok());
        let bos = token("tokenizer.ggml.bos_token_id");
        let mut eos: Vec<TokenId> = token("tokenizer.ggml.eos_token_id").into_iter().collect();
        // Chat turns end with `<end_of_turn>`, which llama.cpp also treats as end of generation.
        eos.extend(inner.token_to_id("<end_of_turn>"));
        eos.sort_unstable();
        eos.dedup();
        let add_bos = meta.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(true);
        Ok(Tokenizer { inner, bos, eos, add_bos, post_processed: false })
    }

    /// Loads `tokenizer.json` from an HF model directory, with BOS/EOS from `tokenizer_config.json` and
    /// `generation_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(Error::bad_model(dir, "tokenizer.json is missing"));
        }
        let inner = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| Error::bad_model(&file, format!("invalid tokenizer.json: {e}")))?;
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let generation = read_json(&dir.join("generation_config.json"))?;
        let token_id = |v: Option<&serde_json::Value>| -> Option<TokenId> {
            let text = match v? {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => o.get("content")?.as_str()?.to_string(),
                _ => return None,
            };
            inner.token_to_id(&text)
        };
        let mut eos: Vec<TokenId> = token_id(config.get("eos_token")).into_iter().collect();
        match generation.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|x| x as TokenId)),
            Some(serde_json::Value::Array(a)) => eos.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as TokenId)),
            _ => {}
        }
        eos.sort_unstable();
        eos.dedup();
        let bos = token_id(config.get("bos_token"))
            .or_else(|| generation.get("bos_token_id").and_then(|v| v.as_u64()).map(|x| x as TokenId));
        let post_processed = inner.get_post_processor().is_some();
        Ok(Tokenizer { inner, bos, eos, add_bos: false, post_processed })
    }

    /// Encodes text. With `add_special`, the model's own rule for raw prompts applies (BOS when the model asks for
    /// it); chat-templated text is encoded without (the template writes its own special tokens). Never produces a
    /// double BOS.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<TokenId>> {
        let enc = self.inner.encode(text, add_special && self.post_processed).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if add_special && self.add_bos {
            if let Some(bos) = self.bos {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        if let (Some(bos), [a, b, ..]) = (self.bos, ids.as_slice()) {
            if *a == bos && *b == bos {
                ids.remove(0);
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[TokenId], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The vocabulary entry of an id (`Ġ` for a leading space, as stored).
    pub fn piece(&self, id: TokenId) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry or special token.
    pub fn token_id(&self, piece: &str) -> Option<TokenId> {
        self.inner.token_to_id(piece)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Beginning-of-sequence id.
    pub fn bos(&self) -> Option<TokenId> {
        self.bos
    }

    /// End-of-sequence ids (generation stops on any of them).
    pub fn eos(&self) -> &[TokenId] {
        &self.eos
    }

    /// The text of a special token id, if it has one.
    pub fn special_text(&self, id: Option<TokenId>) -> String {
        id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default()
    }

    /// This tokenizer as a self-contained HF tokenizer: when BOS is added by the engine (GGUF
    /// `tokenizer.ggml.add_bos_token`), a post-processor that adds it, so `tokenizer.json` alone encodes as this does.
    pub fn hf_tokenizer(&self) -> tokenizers::Tokenizer {
        let mut inner = self.inner.clone();
        if let (true, false, Some(bos)) = (self.add_bos, self.post_processed, self.bos) {
            let text = self.special_text(Some(bos));
            let post = tokenizers::processors::template::TemplateProcessing::builder()
                .try_single(format!("{text} $A"))
                .and_then(|b| b.try_pair(format!("{text} $A {text} $B")))
                .map(|b| b.special_tokens(vec![(text.clone(), bos)]).build());
            if let Ok(Ok(post)) = post {
                inner.with_post_processor(Some(post));
            }
        }
        inner
    }

    /// Whether encoding a raw prompt starts with BOS (the engine's rule or the HF post-processor's).
    pub fn adds_bos(&self) -> bool {
        self.bos.is_some() && (self.add_bos || self.encode("", true).is_ok_and(|ids| ids.first() == self.bos.as_ref()))
    }

    /// The underlying HF tokenizer (for streaming decode).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    if !path.is_file() {
        return Ok(serde_json::Value::Null);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_model(path, format!("invalid JSON: {e}")))
}

/// Reads a JSON file that may be absent (`Null` then).
pub(crate) fn read_optional_json(path: &Path) -> Result<serde_json::Value> {
    read_json(path)
}

//! Training of the injection model (used by `palisade-guard-train` and the reproducibility
//! test). Deterministic: fixed seeds, a generator of our own, one thread.

use crate::model::{sigmoid, LinearModel, BUCKETS, IDF_SCALE, WORD_BIT};

/// A small deterministic generator (xorshift64*), so training does not depend on a crate's
/// stream staying the same across versions.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// `n` random decimal digits.
    pub fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Inverse document frequency per bucket over the training rows, quantised.
fn idf(feats: &[(Vec<u32>, bool)], idx: &[usize]) -> Vec<u8> {
    let mut df = vec![0u32; BUCKETS];
    let mut seen = vec![u32::MAX; BUCKETS];
    for (row, &i) in idx.iter().enumerate() {
        for &h in &feats[i].0 {
            let h = (h & !WORD_BIT) as usize;
            if seen[h] != row as u32 {
                seen[h] = row as u32;
                df[h] += 1;
            }
        }
    }
    let n = idx.len() as f32;
    df.iter()
        .map(|&d| {
            let v = ((1.0 + n) / (1.0 + d as f32)).ln() + 1.0;
            (v * IDF_SCALE).round().clamp(1.0, 255.0) as u8
        })
        .collect()
}

/// Logistic regression, AdaGrad, L2, over idf-weighted features; the character and the word
/// blocks are each L2-normalised.
pub fn train(feats: &[(Vec<u32>, bool)], idx: &[usize], epochs: usize) -> LinearModel {
    let idf_q = idf(feats, idx);
    let value = |h: usize| f32::from(idf_q[h]) / IDF_SCALE;
    let mut weights = vec![0.0f32; BUCKETS];
    let mut bias = 0.0f32;
    let mut g2 = vec![1e-6f32; BUCKETS];
    let mut gb = 1e-6f32;
    let mut order: Vec<usize> = idx.to_vec();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..epochs {
        rng.shuffle(&mut order);
        for &i in &order {
            let (f, y) = &feats[i];
            if f.is_empty() {
                continue;
            }
            let (mut nc, mut nw) = (0.0f32, 0.0f32);
            for &hf in f {
                let v = value((hf & !WORD_BIT) as usize);
                if hf & WORD_BIT != 0 {
                    nw += v * v;
                } else {
                    nc += v * v;
                }
            }
            let sc = 1.0 / nc.max(f32::MIN_POSITIVE).sqrt();
            let sw = 1.0 / nw.max(f32::MIN_POSITIVE).sqrt();
            let x = |hf: u32| {
                let h = (hf & !WORD_BIT) as usize;
                (h, value(h) * if hf & WORD_BIT != 0 { sw } else { sc })
            };
            let z = bias
                + f.iter()
                    .map(|&hf| {
                        let (h, v) = x(hf);
                        weights[h] * v
                    })
                    .sum::<f32>();
            let err = sigmoid(z) - if *y { 1.0 } else { 0.0 };
            for &hf in f {
                let (h, v) = x(hf);
                let g = err * v + L2 * weights[h];
                g2[h] += g * g;
                weights[h] -= LEARNING_RATE * g / g2[h].sqrt();
            }
            gb += err * err;
            bias -= LEARNING_RATE * err / gb.sqrt();
        }
    }
    LinearModel::new(bias, weights, idf_q).quantized()
}

/// One labelled row of a training file.
pub struct Row {
    pub text: String,
    pub folded: String,
    pub injection: bool,
    pub source: String,
    pub hard_negative: bool,
}

/// Reads JSON-lines files of `{text, label: injection|benign, source?, hard_negative?}`.
pub fn load_rows(paths: &[String]) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("{p}:{}: {e}", i + 1))?;
            let t = v["text"]
                .as_str()
                .ok_or(format!("{p}:{}: no text", i + 1))?;
            let injection = match v["label"].as_str() {
                Some("injection") => true,
                Some("benign") => false,
                _ => return Err(format!("{p}:{}: label must be injection or benign", i + 1)),
            };
            rows.push(Row {
                folded: crate::normalize_masked(t).0.folded,
                text: t.to_string(),
                injection,
                source: v["source"].as_str().unwrap_or(p).to_string(),
                hard_negative: v["hard_negative"].as_bool().unwrap_or(false),
            });
        }
    }
    Ok(rows)
}

/// Trains on every row of the files: the shipped model.
pub fn train_files(paths: &[String], epochs: usize) -> Result<LinearModel, String> {
    let rows = load_rows(paths)?;
    let feats: Vec<(Vec<u32>, bool)> = rows
        .iter()
        .map(|r| (crate::model::text_features(&r.folded), r.injection))
        .collect();
    let all: Vec<usize> = (0..rows.len()).collect();
    Ok(train(&feats, &all, epochs))
}

/// Epochs of the shipped model.
pub const EPOCHS: usize = 10;
const LEARNING_RATE: f32 = 0.2;
const L2: f32 = 1e-6;

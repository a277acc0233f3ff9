"""Train the examples/kws model: a DS-CNN keyword spotter on MFCCs of spoken digits synthesized by espeak-ng (seeded).

    apt-get install espeak-ng                     # once: the Debian speech synthesizer that says the digits
    python tools/train_kws.py [--out examples/kws]

No PyPI or Debian package ships recordings of spoken digits (torchfsdd downloads them at run time), so the words
"zero" .. "nine" are spoken by espeak-ng's own voice data: 8 English accents x 8 voice variants x 4 random
(speed, pitch) draws = 2560 clips. Each clip is resampled to 16 kHz, placed at a random offset in a 1 s window,
mixed with white noise at a random 5-30 dB SNR, and turned into MLPerf Tiny's keyword-spotting features: 49 frames
(40 ms window, 20 ms hop) x 10 MFCCs from 40 log-mel bands (20-4000 Hz), computed here with numpy/scipy.
The features are standardized with the TRAIN set's mean and std (two scalars, stored as ``mean``/``std``).

The model is MLPerf Tiny's DS-CNN with fewer filters: Conv2D 32 (10x4, stride 2) + BatchNormalization + ReLU,
four blocks of DepthwiseConv2D 3x3 + BN + ReLU + Conv2D 1x1 + BN + ReLU, Dropout, AveragePooling2D over the whole
(25x5) map, Flatten, Dense softmax. Writes kws.h5 (legacy HDF5), calib.npz (x: 200 training clips, float16) and test.npz
(x, y, classes: the held-out 20 %).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("", "+m1", "+m3", "+m5", "+f1", "+f2", "+f4", "+croak")
DRAWS = 4
RATE = 16000
FRAME, HOP, N_FFT, N_MELS, N_MFCC = 640, 320, 1024, 40, 10
FRAMES = 1 + (RATE - FRAME) // HOP  # 49


def speak(word: str, voice: str, speed: int, pitch: int, tmp: Path) -> np.ndarray:
    """espeak-ng's rendering of `word` as float32 samples at 16 kHz."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    wav = tmp / "w.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), word],
                   check=True, capture_output=True)
    rate, x = wavfile.read(wav)
    x = x.astype(np.float32) / 32768.0
    g = np.gcd(RATE, rate)
    return resample_poly(x, RATE // g, rate // g).astype(np.float32)


def place(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip trimmed of silence, at a random offset in a 1 s window, plus white noise at a 5-30 dB SNR."""
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    x = x[loud[0]:loud[-1] + 1][:RATE]
    out = np.zeros(RATE, np.float32)
    start = int(rng.integers(0, RATE - len(x) + 1))
    out[start:start + len(x)] = x
    snr_db = rng.uniform(5.0, 30.0)
    noise_rms = np.sqrt(np.mean(x ** 2)) / 10 ** (snr_db / 20)
    return out + rng.normal(0.0, noise_rms, RATE).astype(np.float32)


def mel_filterbank() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangular filters on the HTK mel scale from 20 to 4000 Hz."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(20.0), mel(4000.0), N_MELS + 2))
    freqs = np.linspace(0.0, RATE / 2, N_FFT // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


def mfcc(x: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """(RATE,) samples -> (FRAMES, N_MFCC) MFCCs: Hann window, |FFT|^2, log mel energies, orthonormal DCT-II."""
    from scipy.fft import dct

    idx = np.arange(FRAME)[None, :] + HOP * np.arange(FRAMES)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(FRAME), N_FFT)) ** 2
    return dct(np.log(spec @ bank.T + 1e-6), type=2, norm="ortho", axis=1)[:, :N_MFCC].astype(np.float32)


def make_dataset(seed: int) -> tuple[np.ndarray, np.ndarray]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    rng = np.random.default_rng(seed)
    bank = mel_filterbank()
    xs, ys = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, word in enumerate(WORDS):
            for accent in ACCENTS:
                for variant in VARIANTS:
                    for _ in range(DRAWS):
                        speed, pitch = int(rng.integers(120, 200)), int(rng.integers(20, 80))
                        clip = place(speak(word, accent + variant, speed, pitch, Path(tmp)), rng)
                        xs.append(mfcc(clip, bank))
                        ys.append(label)
    return np.stack(xs)[..., None], np.asarray(ys, np.int64)


def build_ds_cnn(keras, filters: int = 32, blocks: int = 4):
    layers = keras.layers
    inp = keras.Input((FRAMES, N_MFCC, 1), name="mfcc")
    x = layers.Conv2D(filters, (10, 4), strides=2, padding="same")(inp)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for _ in range(blocks):
        x = layers.DepthwiseConv2D(3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(filters, 1)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Dropout(0.2)(x)
    x = layers.AveragePooling2D(pool_size=(x.shape[1], x.shape[2]))(x)
    x = layers.Flatten()(x)
    out = layers.Dense(len(WORDS), activation="softmax")(x)
    return keras.Model(inp, out, name="kws")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "kws")
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()

    import keras
    from sklearn.model_selection import train_test_split

    x, y = make_dataset(seed=0)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mean, std = np.float32(x_tr.mean()), np.float32(x_tr.std())
    # stored as float16 (half the bytes); every figure below is computed on the stored values
    x_tr, x_te = (((v - mean) / std).astype(np.float16).astype(np.float32) for v in (x_tr, x_te))

    keras.utils.set_random_seed(0)
    model = build_ds_cnn(keras)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=32, verbose=0, shuffle=True)
    _, acc = model.evaluate(x_te, y_te, verbose=0)
    print(f"kws: {len(x)} clips, {model.count_params()} parameters, float test accuracy {acc:.4f} "
          f"on {len(x_te)} clips")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "kws.h5", include_optimizer=False)
    rng = np.random.default_rng(0)
    calib = x_tr[rng.choice(len(x_tr), 200, replace=False)]
    classes = np.asarray(WORDS)
    np.savez_compressed(args.out / "calib.npz", x=calib.astype(np.float16), mean=mean, std=std)
    np.savez_compressed(args.out / "test.npz", x=x_te.astype(np.float16), y=y_te, classes=classes, mean=mean,
                        std=std)


if __name__ == "__main__":
    main()

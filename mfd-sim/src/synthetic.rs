//! Owns synthetic scan pages for load runs: valid PNG images of an exact file
//! size, filled with noise, so the gateway's content sniffing and the
//! pipeline see a real image of the size under test. It must not do I/O.
//!
//! The image is 8-bit greyscale and its pixel data is stored in uncompressed
//! ("stored") deflate blocks, which makes the file size a simple function of
//! the image size; the last few bytes needed to hit the size exactly go into
//! a `tEXt` comment chunk, which every decoder skips.

use bytes::Bytes;

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
/// Chunk length, type and CRC around each chunk's data.
const CHUNK_OVERHEAD: usize = 12;
const IHDR_LEN: usize = 13;
/// zlib header (2) and Adler-32 trailer (4).
const ZLIB_OVERHEAD: usize = 6;
/// Each stored block: a header byte and LEN/NLEN.
const BLOCK_OVERHEAD: usize = 5;
const MAX_BLOCK: usize = 65_535;
/// The padding chunk is `tEXt` with keyword `Comment` and a NUL separator.
const PAD_KEYWORD: &[u8] = b"Comment\0";
const PAD_MIN: usize = CHUNK_OVERHEAD + PAD_KEYWORD.len();
/// The widest page we make; 2480 pixels is A4 at 300 dpi.
const MAX_WIDTH: usize = 2480;

/// The smallest PNG this module can produce: a 1×1 image plus the padding
/// chunk.
pub const MIN_PNG_SIZE: usize =
    SIGNATURE.len() + CHUNK_OVERHEAD + IHDR_LEN + png_data_len(1, 1) + CHUNK_OVERHEAD + PAD_MIN;

/// The largest: one IDAT chunk holds at most 2^31 - 1 bytes.
pub const MAX_PNG_SIZE: usize = (1 << 31) - 1;

/// The requested size cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a synthetic PNG page must be between {MIN_PNG_SIZE} and {MAX_PNG_SIZE} bytes, not {0}")]
pub struct SizeOutOfRange(pub usize);

/// Bytes of the IDAT chunk (with its overhead) for a `width`×`height`
/// greyscale image stored uncompressed: each row has a filter byte.
const fn png_data_len(width: usize, height: usize) -> usize {
    let raw = height * (width + 1);
    let blocks = if raw == 0 { 1 } else { raw.div_ceil(MAX_BLOCK) };
    CHUNK_OVERHEAD + ZLIB_OVERHEAD + raw + BLOCK_OVERHEAD * blocks
}

/// Size of the file without the padding chunk.
const fn core_len(width: usize, height: usize) -> usize {
    SIGNATURE.len() + CHUNK_OVERHEAD + IHDR_LEN + png_data_len(width, height) + CHUNK_OVERHEAD
}

/// Picks the image size for a file of `size` bytes: as wide as a page (or
/// square for small files) and as tall as fits with room for the padding.
fn dimensions(size: usize) -> (usize, usize) {
    let mut width = size.isqrt().clamp(1, MAX_WIDTH);
    loop {
        let budget = size - PAD_MIN;
        let fixed = core_len(width, 0) - BLOCK_OVERHEAD;
        let mut height = budget.saturating_sub(fixed) / (width + 1);
        while height > 0 && core_len(width, height) > budget {
            height -= 1;
        }
        if height > 0 || width == 1 {
            return (width, height.max(1));
        }
        width /= 2;
    }
}

/// A valid greyscale PNG of exactly `size` bytes with pseudo-random pixels
/// from `seed` (the same seed gives the same bytes).
pub fn noise_png(size: usize, seed: u64) -> Result<Bytes, SizeOutOfRange> {
    if !(MIN_PNG_SIZE..=MAX_PNG_SIZE).contains(&size) {
        return Err(SizeOutOfRange(size));
    }
    let (width, height) = dimensions(size);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(SIGNATURE);

    let mut ihdr = Vec::with_capacity(IHDR_LEN);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    // Bit depth 8, colour type 0 (greyscale), deflate, adaptive filtering, no
    // interlace.
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);

    let idat_start = out.len();
    let idat_len = png_data_len(width, height) - CHUNK_OVERHEAD;
    out.extend_from_slice(&(idat_len as u32).to_be_bytes());
    out.extend_from_slice(b"IDAT");
    // zlib header: deflate with a 32 KiB window, no dictionary, lowest
    // compression level; 0x7801 is a multiple of 31 as the format requires.
    out.extend_from_slice(&[0x78, 0x01]);
    let mut rng = XorShift::new(seed);
    let mut adler = Adler32::new();
    let raw_len = height * (width + 1);
    let mut written = 0;
    while written < raw_len {
        let block = (raw_len - written).min(MAX_BLOCK);
        let last = written + block == raw_len;
        out.push(u8::from(last));
        out.extend_from_slice(&(block as u16).to_le_bytes());
        out.extend_from_slice(&(!(block as u16)).to_le_bytes());
        let from = out.len();
        for offset in written..written + block {
            // Filter type 0 (none) at the start of each row, noise elsewhere.
            out.push(if offset % (width + 1) == 0 {
                0
            } else {
                rng.next_byte()
            });
        }
        adler.update(&out[from..]);
        written += block;
    }
    out.extend_from_slice(&adler.finish().to_be_bytes());
    let crc = crc32(&out[idat_start + 4..]);
    out.extend_from_slice(&crc.to_be_bytes());

    let pad_text = size - core_len(width, height) - PAD_MIN;
    let mut text = Vec::with_capacity(PAD_KEYWORD.len() + pad_text);
    text.extend_from_slice(PAD_KEYWORD);
    let filler = b"synthetic scan page for load tests. ";
    text.extend(filler.iter().cycle().take(pad_text));
    chunk(&mut out, b"tEXt", &text);
    chunk(&mut out, b"IEND", &[]);
    debug_assert_eq!(out.len(), size);
    Ok(Bytes::from(out))
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as PNG chunks use.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut n = 0;
        while n < 256 {
            let mut c = n as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[n] = c;
            n += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Adler-32 as zlib streams end with.
struct Adler32 {
    a: u32,
    b: u32,
}

impl Adler32 {
    fn new() -> Self {
        Adler32 { a: 1, b: 0 }
    }

    fn update(&mut self, data: &[u8]) {
        // 5552 is the longest run for which the sums cannot overflow u32
        // before the modulo (the bound zlib uses).
        for run in data.chunks(5552) {
            for &byte in run {
                self.a += u32::from(byte);
                self.b += self.a;
            }
            self.a %= 65_521;
            self.b %= 65_521;
        }
    }

    fn finish(&self) -> u32 {
        (self.b << 16) | self.a
    }
}

/// xorshift64*: fast, deterministic noise; not for anything secret.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // The seed is scrambled with one splitmix64 step so that nearby seeds
        // give unrelated streams; zero is the one state xorshift never
        // leaves, so it is replaced.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next_byte(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GenericImageView;

    #[test]
    fn known_checksums() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let mut a = Adler32::new();
        a.update(b"Wikipedia");
        assert_eq!(a.finish(), 0x11E6_0398);
    }

    #[test]
    fn sizes_are_exact_and_images_decode() {
        for size in [
            MIN_PNG_SIZE,
            MIN_PNG_SIZE + 1,
            100,
            1000,
            4096,
            65_600,
            200_003,
            3_000_000,
        ] {
            let png = noise_png(size, 7).unwrap();
            assert_eq!(png.len(), size, "size {size}");
            let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
                .unwrap_or_else(|e| panic!("size {size} does not decode: {e}"));
            let (w, h) = img.dimensions();
            assert!(core_len(w as usize, h as usize) + PAD_MIN <= size);
            assert_eq!(image::guess_format(&png).unwrap(), image::ImageFormat::Png);
        }
    }

    #[test]
    fn pixels_are_what_was_stored() {
        let png = noise_png(5000, 42).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_luma8();
        let mut rng = XorShift::new(42);
        for pixel in img.pixels() {
            assert_eq!(pixel.0[0], rng.next_byte());
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        assert_eq!(noise_png(10_000, 1).unwrap(), noise_png(10_000, 1).unwrap());
        for (a, b) in [(0, 1), (1, 2), (2, 3)] {
            assert!(
                noise_png(10_000, a).unwrap() != noise_png(10_000, b).unwrap(),
                "seeds {a} and {b}"
            );
        }
    }

    #[test]
    fn out_of_range_sizes_are_refused() {
        assert_eq!(
            noise_png(MIN_PNG_SIZE - 1, 0),
            Err(SizeOutOfRange(MIN_PNG_SIZE - 1))
        );
        assert!(noise_png(0, 0).is_err());
    }
}

//! Hostile inputs made on the spot: images whose headers claim far more pixels than they hold, in each
//! format a decoder allocates from. Shared by the library's and the binary's tests.
#![allow(dead_code)] // each test binary uses a different subset

use image::{ImageFormat, RgbImage};

fn encoded(format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 90]))
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// A small PNG whose header (with a valid checksum) claims `side`×`side` pixels.
pub fn png_claiming(side: u32) -> Vec<u8> {
    let mut b = encoded(ImageFormat::Png);
    b[16..20].copy_from_slice(&side.to_be_bytes());
    b[20..24].copy_from_slice(&side.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A small baseline JPEG whose frame header claims `side`×`side` pixels (at most 65535).
pub fn jpeg_claiming(side: u16) -> Vec<u8> {
    let mut b = encoded(ImageFormat::Jpeg);
    let sof = b.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline frame header");
    b[sof + 5..sof + 7].copy_from_slice(&side.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&side.to_be_bytes());
    b
}

/// A small GIF whose screen and frame claim `side`×`side` pixels (at most 65535).
pub fn gif_claiming(side: u16) -> Vec<u8> {
    let mut b = encoded(ImageFormat::Gif);
    b[6..8].copy_from_slice(&side.to_le_bytes());
    b[8..10].copy_from_slice(&side.to_le_bytes());
    let frame = b.iter().position(|&x| x == 0x2C).expect("an image descriptor");
    b[frame + 5..frame + 7].copy_from_slice(&side.to_le_bytes());
    b[frame + 7..frame + 9].copy_from_slice(&side.to_le_bytes());
    b
}

/// A small lossless WebP whose header claims `side`×`side` pixels (at most 16384).
pub fn webp_claiming(side: u32) -> Vec<u8> {
    let mut b = encoded(ImageFormat::WebP);
    assert_eq!(&b[12..16], b"VP8L", "the encoder writes lossless WebP");
    let bits = u32::from_le_bytes(b[21..25].try_into().unwrap());
    let dims = (side - 1) | ((side - 1) << 14);
    b[21..25].copy_from_slice(&((bits & !0x0FFF_FFFF) | dims).to_le_bytes());
    b
}

/// PNG's CRC-32 (ISO-HDLC).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &byte in bytes {
        c ^= byte as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

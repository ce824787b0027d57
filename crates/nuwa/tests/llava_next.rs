//! LLaVA-NeXT against the fixture `tests/fixtures/tiny-llava-next` (made with transformers): the anyres
//! geometry of every case in `golden.json`, exact.
use nuwa::models::llava_next::anyres::{Anyres, UnpadAxis};
use serde_json::Value;
use std::path::PathBuf;

fn golden() -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llava-next");
    serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap()
}

const PINPOINTS: [[u32; 2]; 5] = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

fn pair<T: TryFrom<u64>>(v: &Value) -> (T, T)
where
    T::Error: std::fmt::Debug,
{
    let n = |i: usize| T::try_from(v[i].as_u64().unwrap()).unwrap();
    (n(0), n(1))
}

#[test]
fn anyres_geometry_matches_every_golden_case() {
    let g = golden();
    let cases = g["geometry_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 28);
    for c in cases {
        let (w, h): (u32, u32) = pair(&c["image_size_wh"]);
        let a = Anyres::plan(w, h, &PINPOINTS, 336, 24).unwrap();
        let at = format!("{w}×{h}");
        assert_eq!(a.best_hw, pair(&c["best_resolution_hw"]), "{at}: best resolution");
        assert_eq!((a.rows, a.cols), pair(&c["crop_grid_rows_cols"]), "{at}: crop grid");
        assert_eq!(a.resized_hw, pair(&c["resized_hw"]), "{at}: resize");
        let pad: Vec<u32> =
            c["pad_top_bottom_left_right"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(a.pad.to_vec(), pad, "{at}: padding");
        assert_eq!(a.stitched_hw, pair(&c["stitched_hw"]), "{at}: stitched grid");
        let axis = if c["unpad_axis"] == "rows" { UnpadAxis::Rows } else { UnpadAxis::Cols };
        assert_eq!(a.unpad_axis, axis, "{at}: unpad axis");
        assert_eq!(a.unpad_new_size as u64, c["unpad_new_size"].as_u64().unwrap(), "{at}: unpadded size");
        assert_eq!(a.unpad_each_side as u64, c["unpad_each_side"].as_u64().unwrap(), "{at}: cut per side");
        assert_eq!(a.unpadded_hw, pair(&c["unpadded_hw"]), "{at}: unpadded grid");
        assert_eq!(a.num_image_tokens(576) as u64, c["num_image_tokens"].as_u64().unwrap(), "{at}: N_img");
    }
    // The fixture image itself.
    let a = Anyres::plan(480, 307, &PINPOINTS, 336, 24).unwrap();
    assert_eq!((a.views(), a.num_image_tokens(576)), (3, g["num_image_tokens"].as_u64().unwrap() as usize));
}

#[test]
fn stitched_indices_follow_the_crops_row_major() {
    // 480×307: two crops side by side, 24×48 stitched, columns 5…42 kept.
    let a = Anyres::plan(480, 307, &PINPOINTS, 336, 24).unwrap();
    assert_eq!(a.unpadded_hw, (24, 38));
    assert_eq!(a.stitched_index(0), 5);
    assert_eq!(a.stitched_index(38), 48 + 5, "the next row starts one stitched row down");
    // Stitched column 30 of row 2 is column 6 of the second crop.
    assert_eq!(a.crop_patch(2, 30, 24), (1, 2 * 24 + 6));
    // 260×500: two crops stacked; stitched row 30 is row 6 of the lower crop.
    let tall = Anyres::plan(260, 500, &PINPOINTS, 336, 24).unwrap();
    assert_eq!((tall.rows, tall.cols), (2, 1));
    assert_eq!(tall.crop_patch(30, 3, 24), (1, 6 * 24 + 3));
    assert_eq!(tall.stitched_index(0), 24, "one row cut at the top");
}

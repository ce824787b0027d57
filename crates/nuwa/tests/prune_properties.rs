//! Properties of Nüwa's pure functions that would catch real bugs on inputs the fixtures do not cover.
use candle_core::{Device, Tensor};
use nuwa::layout::SequenceLayout;
use nuwa::prune::PositionPolicy;

/// 1-D positions for a prefix, one vision token per kept patch of `n`, and a suffix.
fn layout_positions(policy: PositionPolicy, p: usize, kept: &[usize], n: usize, s: usize) -> Vec<u32> {
    SequenceLayout::linear(p, n, s).assign(policy, kept).unwrap().as_linear().unwrap().to_vec()
}
use nuwa::prune::nuwa::{self as nw, NuwaConfig, Stages};
use proptest::prelude::*;

fn grid_and_saliency() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (2usize..20, 2usize..20).prop_flat_map(|(h, w)| {
        // Few distinct values, so ties are common.
        (Just(h), Just(w), prop::collection::vec((0u8..16).prop_map(|v| v as f32 / 16.0), h * w))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn anchors_sorted_unique_and_at_most_n_per_cell((h, w, s) in grid_and_saliency(), frac in 0.05f64..1.2) {
        let cells = (h / 2) * (w / 2);
        let k1 = ((frac * (h * w) as f64) as usize).max(1);
        let n = k1.div_ceil(cells).clamp(1, 4);
        let anchors = nw::select_anchors(&s, h, w, k1, n, true);
        prop_assert!(anchors.windows(2).all(|p| p[0] < p[1]), "sorted and unique");
        prop_assert!(anchors.iter().all(|&a| a < h * w));
        if n < 4 && k1 <= n * cells {
            prop_assert_eq!(anchors.len(), k1);
            let mut per_cell = std::collections::HashMap::new();
            for &a in &anchors {
                let (r, c) = (a / w, a % w);
                prop_assert!(r < h - h % 2 && c < w - w % 2, "odd last row/column is never a candidate");
                *per_cell.entry((r / 2, c / 2)).or_insert(0) += 1;
            }
            prop_assert!(per_cell.values().all(|&k| k <= n), "no cell gives more than n anchors");
        }
    }

    #[test]
    fn global_topk_prefers_salient_then_lower_index((h, w, s) in grid_and_saliency(), k1 in 1usize..40) {
        let k1 = k1.min(h * w);
        let anchors = nw::select_anchors(&s, h, w, k1, 1, false);
        prop_assert_eq!(anchors.len(), k1);
        // Every dropped patch is less salient than, or tied with and after, every kept one.
        for j in (0..h * w).filter(|j| !anchors.contains(j)) {
            for &a in &anchors {
                prop_assert!(s[a] > s[j] || (s[a] == s[j] && a < j));
            }
        }
    }

    #[test]
    fn pillars_pass_through_bit_for_bit((h, w, s) in grid_and_saliency(), q in 0.0f64..=1.0, seed in 0u64..1000) {
        let n = h * w;
        let x: Vec<f32> = (0..n * 6).map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f32 / 37.0 - 13.0).collect();
        let m: Vec<f32> = (0..n * 4).map(|i| ((i as u64 * 40503 + seed) % 997) as f32 / 101.0 - 4.0).collect();
        let x = Tensor::from_vec(x, (n, 6), &Device::Cpu).unwrap();
        let m = Tensor::from_vec(m, (n, 4), &Device::Cpu).unwrap();
        let cfg = NuwaConfig { pillar_quantile: Some(q), ..NuwaConfig::default() };
        let k1 = (n / 3).max(1);
        let budgets = nw::Budgets { k1, k2: None, top_n: k1.div_ceil((h / 2) * (w / 2)).clamp(1, 4) };
        let out = nw::stage1(&s, &x, &m, (h, w), &budgets, &cfg).unwrap();
        let tokens = out.tokens.to_vec2::<f32>().unwrap();
        let x = x.to_vec2::<f32>().unwrap();
        prop_assert_eq!(tokens.len(), out.anchors.len());
        prop_assert!(out.pillars.iter().any(|&p| p), "the top anchor always reaches the quantile");
        for ((&a, &is_pillar), t) in out.anchors.iter().zip(&out.pillars).zip(&tokens) {
            if is_pillar {
                prop_assert!(t.iter().zip(&x[a]).all(|(u, v)| u.to_bits() == v.to_bits()), "pillar {} changed", a);
            }
        }
    }

    #[test]
    fn budget_rule_averages_to_b(b in 2usize..2000) {
        let k = nw::budgets(b, Stages::Both, 24, 24);
        if k.k1 < 576 {
            let k2 = k.k2.expect("a cut whenever K1 < N");
            prop_assert_eq!(k.k1 + k2, 2 * b);
            prop_assert!(k2 >= 1 && k2 < k.k1);
        }
        prop_assert!(k.top_n >= 1 && k.top_n <= 4);
        prop_assert!(k.k1 <= 576);
    }

    #[test]
    fn positions_strictly_increase(p in 0usize..80, s in 0usize..40, keep in prop::collection::btree_set(0usize..576, 0..576)) {
        let kept: Vec<usize> = keep.into_iter().collect();
        let pos = layout_positions(PositionPolicy::Original, p, &kept, 576, s);
        prop_assert_eq!(pos.len(), p + kept.len() + s);
        prop_assert!(pos.windows(2).all(|w| w[0] < w[1]));
        if s > 0 {
            prop_assert_eq!(*pos.last().unwrap() as usize, p + 576 + s - 1);
        }
    }

    #[test]
    fn stage2_keeps_the_best_in_order(scores in prop::collection::vec(0u8..8, 1..200), k in 1usize..50) {
        let scores: Vec<f32> = scores.into_iter().map(f32::from).collect();
        let keep = nw::stage2_keep(&scores, k, nw::Stage2Rule::Attention, 0);
        prop_assert_eq!(keep.len(), k.min(scores.len()));
        prop_assert!(keep.windows(2).all(|w| w[0] < w[1]));
        let worst_kept = keep.iter().map(|&i| scores[i]).fold(f32::INFINITY, f32::min);
        prop_assert!((0..scores.len()).filter(|i| !keep.contains(i)).all(|i| scores[i] <= worst_kept));
        let random = nw::stage2_keep(&scores, k, nw::Stage2Rule::Random, 7);
        prop_assert_eq!(&random, &nw::stage2_keep(&scores, k, nw::Stage2Rule::Random, 7), "seeded");
        prop_assert!(random.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn published_budget_table() {
    for (b, k1, k2, n) in [(64, 112, 16, 1), (128, 224, 32, 2), (192, 336, 48, 3)] {
        let got = nw::budgets(b, Stages::Both, 24, 24);
        assert_eq!((got.k1, got.k2, got.top_n), (k1, Some(k2), n), "B = {b}");
    }
    assert_eq!(nw::budgets(64, Stages::One, 24, 24).k1, 64);
    assert_eq!(nw::budgets(64, Stages::Two, 24, 24), nw::Budgets { k1: 576, k2: Some(64), top_n: 4 });
    // K2 ≥ K1: no cut.
    assert_eq!(nw::budgets(600, Stages::Both, 24, 24).k2, None);
}

#[test]
fn quantile_interpolates_like_torch() {
    assert_eq!(nw::quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
    assert_eq!(nw::quantile(&[4.0, 1.0, 3.0, 2.0], 0.0), 1.0);
    assert_eq!(nw::quantile(&[4.0, 1.0, 3.0, 2.0], 1.0), 4.0);
    assert!((nw::quantile(&[0.0, 10.0], 0.55) - 5.5).abs() < 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_indices_are_k_distinct_sorted_and_seeded(n in 1usize..700, frac in 0.0f64..1.0, seed in any::<u64>()) {
        let k = ((n as f64) * frac) as usize;
        let a = nuwa::prune::random::indices(n, k, seed);
        prop_assert_eq!(a.len(), k);
        prop_assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        prop_assert!(a.iter().all(|&i| i < n));
        prop_assert_eq!(&a, &nuwa::prune::random::indices(n, k, seed), "same seed, same set");
    }

    #[test]
    fn stretched_positions_span_the_image(p in 0usize..60, s in 0usize..20, keep in prop::collection::btree_set(0usize..576, 1..576)) {
        let kept: Vec<usize> = keep.into_iter().collect();
        let pos = layout_positions(PositionPolicy::Stretched, p, &kept, 576, s);
        let vision = &pos[p..p + kept.len()];
        prop_assert_eq!(vision[0] as usize, p, "first = s");
        if kept.len() > 1 {
            prop_assert_eq!(*vision.last().unwrap() as usize, p + 575, "last = e");
        }
        prop_assert!(vision.iter().all(|&v| (p..=p + 575).contains(&(v as usize))), "inside the span");
        prop_assert!(pos.windows(2).all(|w| w[0] < w[1]), "monotone over the whole sequence");
        prop_assert!(pos[p + kept.len()..].iter().enumerate().all(|(k, &v)| v as usize == p + 576 + k), "text after e");
    }
}

#[test]
fn random_selection_is_uniform_over_seeds() {
    // Over many seeds every patch is kept about k/n of the time (chi-square, 575 degrees of freedom:
    // mean 575, sd ≈ 34; 800 is far beyond chance for a uniform sampler).
    let (n, k, runs) = (576usize, 64usize, 2000u64);
    let mut counts = vec![0f64; n];
    for seed in 0..runs {
        for i in nuwa::prune::random::indices(n, k, seed) {
            counts[i] += 1.0;
        }
    }
    let expected = runs as f64 * k as f64 / n as f64;
    let chi2: f64 = counts.iter().map(|c| (c - expected).powi(2) / expected).sum();
    assert!(chi2 < 800.0, "chi-square {chi2}");
    assert_ne!(nuwa::prune::random::indices(n, k, 1), nuwa::prune::random::indices(n, k, 2));
}

/// VisPruner keeps exactly `budget` distinct patches at every budget, the smallest included (a small
/// residual once ran past the end of its candidates).
#[test]
fn vispruner_keeps_the_budget_at_every_size() {
    use nuwa::prune::vispruner::select;
    let n = 64;
    let attn: Vec<f32> = (0..n).map(|i| ((i * 37) % 64) as f32 / 64.0).collect();
    let rows: Vec<Vec<f32>> =
        (0..n).map(|i| (0..6).map(|d| (((i * 7 + d * 13) % 11) as f32) - 5.0).collect()).collect();
    for budget in 1..=n + 3 {
        let (kept, important) = select(&attn, &rows, budget, 0.5);
        assert_eq!(kept.len(), budget.min(n), "budget {budget}");
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "budget {budget}: sorted, distinct");
        assert!(important.iter().all(|i| kept.contains(i)));
    }
}

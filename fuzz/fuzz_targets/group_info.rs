#![no_main]
use libfuzzer_sys::fuzz_target;
use sealgate_server::ds::engine;

fuzz_target!(|data: &[u8]| {
    // First byte chooses whether the rest is also offered as a separate ratchet tree.
    if let Some((&split, rest)) = data.split_first() {
        let at = usize::from(split).min(rest.len());
        let (info, tree) = rest.split_at(at);
        let _ = engine::observe_new_group(rest, None);
        let _ = engine::observe_new_group(info, Some(tree));
    }
});

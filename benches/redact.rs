//! Redaction throughput (MB/s): capture at `redacted` must stay cheap.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sidetrace::trace::redact::Redactor;

fn corpus(with_findings: bool, non_ascii: bool) -> String {
    let clean = if non_ascii {
        "Le rapport trimestriel montre une croissance régulière — l’équipe prévoit trois \
         lancements l’an prochain, une revue des contrats « fournisseurs » au printemps. "
    } else {
        "The quarterly report shows steady growth across all regions, with the team \
         planning three launches next year and a review of supplier contracts in spring. "
    };
    let dirty = "Contact jane.doe@example.com or +1 415-555-0132; card 4111 1111 1111 1111, \
                 key sk-proj-abcdefghijklmnopqrstuvwxyz0123 from 10.1.2.3. ";
    let mut text = String::new();
    while text.len() < 64 * 1024 {
        text.push_str(clean);
        if with_findings {
            text.push_str(dirty);
        }
    }
    text
}

fn redaction(c: &mut Criterion) {
    let redactor = Redactor::new(&[]).expect("built-in patterns compile");
    let mut group = c.benchmark_group("redact");
    for (name, text) in [
        ("clean_text", corpus(false, false)),
        ("text_with_findings", corpus(true, false)),
        ("clean_text_non_ascii", corpus(false, true)),
        ("text_with_findings_non_ascii", corpus(true, true)),
        // The findings' digits written in Arabic-Indic ones (searched as the ASCII digits).
        (
            "text_with_findings_arabic_digits",
            corpus(true, true)
                .chars()
                .map(|c| match c.to_digit(10) {
                    Some(d) => char::from_u32('٠' as u32 + d).unwrap_or(c),
                    None => c,
                })
                .collect(),
        ),
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| redactor.redact(std::hint::black_box(&text)).len())
        });
    }
    // One message of a long conversation: a paragraph with an e-mail address and a phone
    // number in a format the patterns do not take, twelve times (2.8 kB).
    let message =
        "Le rapport trimestriel montre une croissance reguliere - l equipe prevoit trois \
                   lancements l an prochain, une revue des contrats fournisseurs au printemps, \
                   et ecrit a jane.doe@example.com ou au +33 6 12 34 56 78. "
            .repeat(12);
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("message_with_findings", |b| {
        b.iter(|| redactor.redact(std::hint::black_box(&message)).len())
    });
    group.finish();
}

criterion_group!(benches, redaction);
criterion_main!(benches);

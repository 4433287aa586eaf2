//! The agent's PSI form agrees with an implementation written from docs/PROTOCOL.md §11.3 and
//! §11.6 alone (tests/psi_form/README.md): a requester built from the specification computes
//! the same `form(v)` as the provider on every one of its inputs.

#[test]
fn the_psi_form_agrees_with_an_implementation_written_from_the_specification() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("psi_form");
    let corpus = std::fs::read_to_string(dir.join("corpus.txt")).unwrap();
    let forms = std::fs::read_to_string(dir.join("forms.txt")).unwrap();
    let (mut n, mut differ) = (0, Vec::new());
    for (i, (input, expected)) in corpus.lines().zip(forms.lines()).enumerate() {
        let input: String = serde_json::from_str(input).unwrap();
        let expected: String = serde_json::from_str(expected).unwrap();
        let got = exchange_agent::verify::compare::psi_form(&input);
        if got != expected {
            differ.push(format!(
                "line {}: {input:?} → {got:?}, the specification's {expected:?}",
                i + 1
            ));
        }
        n += 1;
    }
    assert_eq!(n, corpus.lines().count());
    assert!(n > 6000, "{n} inputs");
    assert!(
        differ.is_empty(),
        "{} of {n} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
}

//! Last-resort key packages across implementations (docs/PROTOCOL.md "Key packages"), with the
//! vectors of `tests/vectors/` (see its README.md): ours are accepted by an independent
//! implementation, theirs by ours, and an invalid one is reported with the reason; and when
//! a last-resort key package is replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dmls_client::engine::{Effect, Engine, Event, Input};
use openmls::prelude::*;
use tls_codec::Deserialize as _;

fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap()
}

fn engine(name: &str) -> Engine {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut e = Engine::open(conn).unwrap();
    e.create_identity(name).unwrap();
    e
}

/// Creates a DGroup of `owner` with `peer` and answers the key-package claim with `kp`;
/// returns the events and the engine.
fn add_with(peer: &str, kp: Vec<u8>) -> (Vec<Event>, Engine) {
    let mut e = engine("owner");
    e.create_dgroup("interop", &[peer.to_string()], 1_000)
        .unwrap();
    let claim = e
        .outbox()
        .unwrap()
        .into_iter()
        .find(|i| matches!(i.effect, Effect::ClaimKeyPackages { .. }))
        .expect("a claim is queued");
    let events = e
        .handle(
            Input::ClaimedKeyPackages {
                outbox_id: claim.id,
                key_packages: vec![(peer.to_string(), kp)],
                missing: Vec::new(),
            },
            2_000,
        )
        .unwrap();
    (events, e)
}

#[test]
fn a_last_resort_key_package_of_an_independent_implementation_is_added() {
    let (events, e) = add_with("mlsrs-peer", vector("mls_rs_last_resort.hex"));
    assert!(events.is_empty(), "{events:?}");
    let welcomed: Vec<String> = e
        .outbox()
        .unwrap()
        .into_iter()
        .filter_map(|i| match i.effect {
            Effect::PostWelcomes(w) => Some(w.into_iter().map(|(to, _)| to)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(welcomed, ["mlsrs-peer"]);
    let d = e.dgroups().unwrap()[0].id;
    let own = e
        .status(&d)
        .unwrap()
        .send_groups
        .into_iter()
        .find(|g| g.owner == "owner")
        .unwrap();
    assert_eq!(own.members, ["owner", "mlsrs-peer"]);
}

#[test]
fn a_key_package_whose_leaf_does_not_list_last_resort_is_rejected_with_the_reason() {
    let (events, e) = add_with(
        "mlsrs-peer",
        vector("mls_rs_last_resort_without_capability.hex"),
    );
    let [
        Event::KeyPackageRejected {
            client_id, reason, ..
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}");
    };
    assert_eq!(client_id, "mlsrs-peer");
    assert!(reason.contains("xtension"), "{reason}");
    // Not added; claimed for again later.
    assert!(
        !e.outbox()
            .unwrap()
            .iter()
            .any(|i| matches!(i.effect, Effect::PostWelcomes(_)))
    );
    let d = e.dgroups().unwrap()[0].id;
    let own = e.status(&d).unwrap().send_groups;
    assert_eq!(
        own.iter().find(|g| g.owner == "owner").unwrap().members,
        ["owner"]
    );
}

#[test]
fn a_key_package_of_another_identity_is_rejected_with_the_reason() {
    let (events, _) = add_with("someone-else", vector("mls_rs_last_resort.hex"));
    let [
        Event::KeyPackageRejected {
            client_id, reason, ..
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}");
    };
    assert_eq!(client_id, "someone-else");
    assert!(reason.contains("mlsrs-peer"), "{reason}");
}

/// A key package's ciphersuite, credential type and leaf capabilities, read from its TLS
/// encoding (RFC 9420 section 10): what an implementation checks when adding it, without the
/// lifetime, which ends.
fn shape(bytes: &[u8]) -> (u16, u16, Vec<Vec<u8>>) {
    use tls_codec::VLBytes;
    let mut r = bytes;
    let u16_at = |r: &mut &[u8]| u16::tls_deserialize(r).unwrap();
    let opaque = |r: &mut &[u8]| VLBytes::tls_deserialize(r).unwrap().as_slice().to_vec();
    assert_eq!(u16_at(&mut r), 1, "MLS 1.0");
    assert_eq!(u16_at(&mut r), 5, "wire format mls_key_package");
    assert_eq!(u16_at(&mut r), 1, "KeyPackage version");
    let suite = u16_at(&mut r);
    let _init_key = opaque(&mut r);
    let _encryption_key = opaque(&mut r);
    let _signature_key = opaque(&mut r);
    let credential_type = u16_at(&mut r);
    let _identity = opaque(&mut r);
    // versions, cipher_suites, extensions, proposals, credentials
    let capabilities = (0..5).map(|_| opaque(&mut r)).collect();
    (suite, credential_type, capabilities)
}

#[test]
fn our_last_resort_key_packages_keep_the_shape_an_independent_implementation_accepted() {
    let mut e = engine("dmls-peer");
    let ours = e.generate_last_resort_key_package().unwrap();
    let (suite, credential_type, capabilities) = shape(&ours);
    assert_eq!(
        (suite, credential_type, capabilities),
        shape(&vector("openmls_last_resort.hex"))
    );
    // The extensions capability lists 0xFF00 and last_resort (10).
    let (_, _, capabilities) = shape(&ours);
    assert_eq!(capabilities[2], [0xff, 0x00, 0x00, 0x0a]);
    let msg = MlsMessageIn::tls_deserialize_exact(&ours).unwrap();
    let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
        panic!("not a key package");
    };
    let kp = kp
        .validate(
            &openmls_rust_crypto::RustCrypto::default(),
            ProtocolVersion::Mls10,
        )
        .unwrap();
    assert!(kp.last_resort());
    // Our own client accepts it too.
    let (events, _) = add_with("dmls-peer", ours);
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn a_last_resort_key_package_is_replaced_once_uploaded_only_when_it_ages() {
    use dmls_client::engine::LAST_RESORT_MAX_AGE_MS;
    let mut e = engine("dmls-peer");
    assert!(e.needs_last_resort(0).unwrap(), "none uploaded yet");
    let kp = e.generate_last_resort_key_package().unwrap();
    assert!(e.needs_last_resort(0).unwrap(), "generated is not uploaded");
    e.last_resort_uploaded(&kp, 1_000).unwrap();
    assert!(!e.needs_last_resort(1_000).unwrap());
    assert!(!e.needs_last_resort(LAST_RESORT_MAX_AGE_MS).unwrap());
    assert!(e.needs_last_resort(1_000 + LAST_RESORT_MAX_AGE_MS).unwrap());
    // Only a last-resort key package counts.
    let fresh = e.generate_key_packages(1).unwrap().remove(0);
    assert!(e.last_resort_uploaded(&fresh, 2_000).is_err());
    assert!(e.needs_last_resort(1_000 + LAST_RESORT_MAX_AGE_MS).unwrap());
}

//! Hostile input: every rejected input leaves the state exactly as it was.

use crate::common::Net;
use dmls_client::engine::{
    DGroupConfig, DGroupId, DGroupStatus, DMLS_EXTENSION_TYPE, Engine, FollowedGroup, Input,
    OutboxItem, ReceivedMessage, TEXT_PLAIN, WaitReason, send_group_id,
};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use tls_codec::{Deserialize as _, Serialize as _};

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Everything observable about an engine.
#[derive(Debug, PartialEq)]
struct Snapshot {
    statuses: Vec<DGroupStatus>,
    history: Vec<Vec<ReceivedMessage>>,
    outbox: Vec<OutboxItem>,
    followed: Vec<FollowedGroup>,
    welcome_cursor: u64,
}

fn snapshot(e: &Engine) -> Snapshot {
    let ds = e.dgroups().unwrap();
    Snapshot {
        statuses: ds.iter().map(|d| e.status(&d.id).unwrap()).collect(),
        history: ds.iter().map(|d| e.history(&d.id, 1000).unwrap()).collect(),
        outbox: e.outbox().unwrap(),
        followed: e.followed_groups().unwrap(),
        welcome_cursor: e.welcome_cursor().unwrap(),
    }
}

/// Feeds `input` to member `i`, expects a rejection, and checks nothing changed.
fn assert_rejected(net: &mut Net, i: usize, input: Input) -> String {
    let before = snapshot(&net.engines[i]);
    let err = net.engines[i]
        .handle(input, 99_000)
        .expect_err("hostile input was accepted");
    assert_eq!(
        before,
        snapshot(&net.engines[i]),
        "state changed after: {err}"
    );
    err.to_string()
}

/// Message `data` as read from m0's Send Group `gid` on the relay.
fn in_m0_group(gid: [u8; 32], data: Vec<u8>) -> Input {
    Input::GroupMessage {
        owner: "m0".into(),
        group_id: hex::encode(gid),
        seq: Some(9),
        data,
    }
}

/// A three-member DGroup, fully set up.
fn setup() -> (Net, DGroupId) {
    let mut net = Net::new(3, 4, 7);
    let d = net.engines[0]
        .create_dgroup("team", &["m1".to_string(), "m2".to_string()], 1000)
        .unwrap();
    net.settle(1000);
    (net, d)
}

/// An MLS client outside the engine, claiming any identity it likes.
struct Attacker {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cred: CredentialWithKey,
}

impl Attacker {
    fn new(identity: &str) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CS.signature_algorithm()).unwrap();
        signer.store(provider.storage()).unwrap();
        let cred = CredentialWithKey {
            credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Attacker {
            provider,
            signer,
            cred,
        }
    }

    /// A valid key package of this identity, its leaf listing the DGroup extension.
    fn key_package(&self) -> KeyPackage {
        let caps = Capabilities::builder()
            .extensions(vec![ExtensionType::Unknown(DMLS_EXTENSION_TYPE)])
            .build();
        KeyPackage::builder()
            .leaf_node_capabilities(caps)
            .build(CS, &self.provider, &self.signer, self.cred.clone())
            .unwrap()
            .key_package()
            .clone()
    }

    /// A group with this id and (if any) this raw 0xFF00 extension.
    fn group(&self, group_id: &[u8], config: Option<Vec<u8>>) -> MlsGroup {
        let caps = Capabilities::builder()
            .extensions(vec![ExtensionType::Unknown(DMLS_EXTENSION_TYPE)])
            .build();
        let mut b = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(group_id))
            .ciphersuite(CS)
            .with_capabilities(caps)
            .use_ratchet_tree_extension(true);
        if let Some(c) = config {
            b = b.with_group_context_extensions(
                Extensions::single(Extension::Unknown(DMLS_EXTENSION_TYPE, UnknownExtension(c)))
                    .unwrap(),
            );
        }
        b.build(&self.provider, &self.signer, self.cred.clone())
            .unwrap()
    }

    /// A Welcome into a new group with this id and (if any) this raw 0xFF00 extension,
    /// adding the holder of `key_package`.
    fn welcome(&self, group_id: &[u8], config: Option<Vec<u8>>, key_package: &[u8]) -> Vec<u8> {
        let mut g = self.group(group_id, config);
        self.add(&mut g, key_package)
    }

    /// Adds the holder of `key_package` to `g`; returns the Welcome.
    fn add(&self, g: &mut MlsGroup, key_package: &[u8]) -> Vec<u8> {
        let kp = match MlsMessageIn::tls_deserialize_exact(key_package)
            .unwrap()
            .extract()
        {
            MlsMessageBodyIn::KeyPackage(kp) => kp
                .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                .unwrap(),
            _ => panic!("not a key package"),
        };
        let (_, welcome, _) = g.add_members(&self.provider, &self.signer, &[kp]).unwrap();
        g.merge_pending_commit(&self.provider).unwrap();
        welcome.tls_serialize_detached().unwrap()
    }
}

fn config(d: DGroupId, members: &[&str]) -> DGroupConfig {
    DGroupConfig {
        dgroup_id: d,
        name: "evil".into(),
        members: members.iter().map(|s| s.to_string()).collect(),
        cipher_suites: vec![1],
        psk_length: 32,
        add_policy: Default::default(),
        removed: Vec::new(),
    }
}

fn welcome_case(
    net: &mut Net,
    owner: &str,
    from: &str,
    group_id: &[u8],
    config: Option<Vec<u8>>,
) -> String {
    let kp = net.engines[2].generate_key_packages(1).unwrap().remove(0);
    let w = Attacker::new(owner).welcome(group_id, config, &kp);
    assert_rejected(
        net,
        2,
        Input::Welcome {
            inbox_id: Some(1000),
            from: from.into(),
            data: w,
        },
    )
}

#[test]
fn welcome_without_config_extension_is_rejected() {
    let (mut net, _) = setup();
    let d = DGroupId([5; 16]);
    let err = welcome_case(&mut net, "m0", "m0", &send_group_id(&d, "m0"), None);
    assert!(err.contains("no DGroup config"), "{err}");
}

#[test]
fn welcome_with_short_dgroup_id_is_rejected() {
    let (mut net, _) = setup();
    let d = DGroupId([5; 16]);
    let mut c = config(d, &["m0", "m2"]).encode().unwrap();
    // dgroup_id<V> of 15 bytes instead of 16.
    c.remove(1);
    c[0] = 15;
    let err = welcome_case(&mut net, "m0", "m0", &send_group_id(&d, "m0"), Some(c));
    assert!(err.contains("16 bytes"), "{err}");
}

#[test]
fn welcome_with_psk_length_other_than_32_is_rejected() {
    let (mut net, _) = setup();
    let d = DGroupId([5; 16]);
    let mut c = config(d, &["m0", "m2"]);
    c.psk_length = 64;
    let err = welcome_case(
        &mut net,
        "m0",
        "m0",
        &send_group_id(&d, "m0"),
        Some(c.encode().unwrap()),
    );
    assert!(err.contains("psk_length"), "{err}");
}

#[test]
fn welcome_not_listing_the_joiner_is_rejected() {
    let (mut net, _) = setup();
    let d = DGroupId([5; 16]);
    let c = config(d, &["m0", "m1"]).encode().unwrap();
    let err = welcome_case(&mut net, "m0", "m0", &send_group_id(&d, "m0"), Some(c));
    assert!(err.contains("does not list us"), "{err}");
}

#[test]
fn welcome_whose_owner_is_not_listed_is_rejected() {
    let (mut net, _) = setup();
    let d = DGroupId([5; 16]);
    let c = config(d, &["m1", "m2"]).encode().unwrap();
    let err = welcome_case(&mut net, "m0", "m0", &send_group_id(&d, "m0"), Some(c));
    assert!(err.contains("not a DGroup member"), "{err}");
}

#[test]
fn welcome_with_group_id_not_the_formula_is_rejected() {
    let (mut net, _) = setup();
    let d = DGroupId([5; 16]);
    let c = config(d, &["m0", "m2"]).encode().unwrap();
    let err = welcome_case(&mut net, "m0", "m0", &send_group_id(&d, "m1"), Some(c));
    assert!(err.contains("Send Group id"), "{err}");
}

#[test]
fn welcome_posted_by_another_than_its_owner_is_rejected() {
    let (mut net, _) = setup();
    let d = DGroupId([5; 16]);
    let c = config(d, &["m0", "m1", "m2"]).encode().unwrap();
    let err = welcome_case(&mut net, "m0", "m1", &send_group_id(&d, "m0"), Some(c));
    assert!(err.contains("posted by m1"), "{err}");
}

#[test]
fn welcome_with_config_differing_from_the_held_one_is_rejected() {
    let (mut net, d) = setup();
    // Same dgroup_id, listed owner, right group id, but another name (a field that never
    // changes) and a member list with a newcomer.
    let c = config(d, &["m0", "m1", "m2", "m3"]).encode().unwrap();
    let err = welcome_case(&mut net, "m3", "m3", &send_group_id(&d, "m3"), Some(c));
    assert!(err.contains("changes its name"), "{err}");
}

#[test]
fn tampered_ciphertext_is_rejected() {
    let (mut net, d) = setup();
    net.engines[0]
        .send(&d, TEXT_PLAIN, b"secret", 2000)
        .unwrap();
    net.drain_all(2000);
    // Take m0's posts to m2 (the policy commit and the message), tamper the last one.
    let mut mine: Vec<Input> = Vec::new();
    net.pool.retain(|p| {
        if p.to == 2 {
            mine.push(p.input.clone());
            false
        } else {
            true
        }
    });
    let last = mine.pop().unwrap();
    for m in mine {
        net.engines[2].handle(m, 2000).unwrap();
    }
    let Input::GroupMessage {
        owner,
        group_id,
        seq,
        mut data,
    } = last.clone()
    else {
        panic!("not a group message");
    };
    let n = data.len();
    data[n - 3] ^= 0x40;
    let err = assert_rejected(
        &mut net,
        2,
        Input::GroupMessage {
            owner,
            group_id,
            seq,
            data,
        },
    );
    assert!(err.contains("cannot process"), "{err}");
    // The genuine message still decrypts afterwards.
    let ev = net.engines[2].handle(last, 2000).unwrap();
    assert_eq!(ev.len(), 1);
}

#[test]
fn garbage_and_messages_of_unknown_groups_are_rejected() {
    let (mut net, d) = setup();
    let gid = hex::encode(send_group_id(&d, "m0"));
    assert_rejected(
        &mut net,
        2,
        Input::GroupMessage {
            owner: "m0".into(),
            group_id: gid.clone(),
            seq: Some(50),
            data: vec![0, 1, 2, 3],
        },
    );
    assert_rejected(
        &mut net,
        2,
        Input::GroupMessage {
            owner: "m1".into(),
            group_id: gid,
            seq: Some(50),
            data: vec![0, 1, 2, 3],
        },
    );
    assert_rejected(
        &mut net,
        2,
        Input::Welcome {
            inbox_id: Some(77),
            from: "m0".into(),
            data: vec![0, 1, 2, 3],
        },
    );
}

/// Direct access to a member's MLS state in its database file, to forge messages it
/// would never send through the engine.
mod forge {
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::RustCrypto;
    use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
    use openmls_traits::OpenMlsProvider;

    /// The engine's codec for openmls state (MessagePack).
    #[derive(Default)]
    pub struct Msgpack;
    impl Codec for Msgpack {
        type Error = std::io::Error;
        fn to_vec<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Self::Error> {
            // As the engine: byte strings as `bin` (storage keys must match byte for byte).
            let mut out = Vec::new();
            let mut ser = rmp_serde::Serializer::new(&mut out)
                .with_bytes(rmp_serde::config::BytesMode::ForceIterables);
            v.serialize(&mut ser).map_err(std::io::Error::other)?;
            Ok(out)
        }
        fn from_slice<T: serde::de::DeserializeOwned>(s: &[u8]) -> Result<T, Self::Error> {
            rmp_serde::from_slice(s).map_err(std::io::Error::other)
        }
    }

    pub struct P<'a> {
        pub crypto: RustCrypto,
        pub storage: SqliteStorageProvider<Msgpack, &'a rusqlite::Connection>,
    }
    impl<'a> OpenMlsProvider for P<'a> {
        type CryptoProvider = RustCrypto;
        type RandProvider = RustCrypto;
        type StorageProvider = SqliteStorageProvider<Msgpack, &'a rusqlite::Connection>;
        fn storage(&self) -> &Self::StorageProvider {
            &self.storage
        }
        fn crypto(&self) -> &Self::CryptoProvider {
            &self.crypto
        }
        fn rand(&self) -> &Self::RandProvider {
            &self.crypto
        }
    }

    pub fn signer(conn: &rusqlite::Connection, p: &P<'_>) -> SignatureKeyPair {
        let public: Vec<u8> = conn
            .query_row(
                "SELECT value FROM dmls_meta WHERE key = 'signature_public'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        SignatureKeyPair::read(p.storage(), &public, SignatureScheme::ED25519).unwrap()
    }
}

fn forge_in(
    dir: &std::path::Path,
    who: &str,
    gid: [u8; 32],
    make: impl FnOnce(&mut MlsGroup, &forge::P<'_>, &SignatureKeyPair) -> MlsMessageOut,
) -> Vec<u8> {
    let conn = rusqlite::Connection::open(dir.join(format!("{who}.db"))).unwrap();
    let p = forge::P {
        crypto: openmls_rust_crypto::RustCrypto::default(),
        storage: openmls_sqlite_storage::SqliteStorageProvider::new(&conn),
    };
    let signer = forge::signer(&conn, &p);
    let mut g = MlsGroup::load(p.storage(), &GroupId::from_slice(&gid))
        .unwrap()
        .unwrap();
    make(&mut g, &p, &signer).tls_serialize_detached().unwrap()
}

fn file_setup(dir: &std::path::Path) -> (Net, DGroupId) {
    let mut net = Net::with_files(3, 4, 9, dir);
    let d = net.engines[0]
        .create_dgroup("team", &["m1".to_string(), "m2".to_string()], 1000)
        .unwrap();
    net.settle(1000);
    (net, d)
}

#[test]
fn application_message_from_a_non_owner_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = file_setup(dir.path());
    let gid = send_group_id(&d, "m0");
    let env = dmls_client::engine::DmlsEnvelope {
        sent_at_ms: 5,
        message_id: dmls_client::engine::MessageId([1; 16]),
        content_type: TEXT_PLAIN.into(),
        body: b"i am not m0".to_vec(),
    }
    .encode()
    .unwrap();
    let data = forge_in(dir.path(), "m1", gid, |g, p, s| {
        g.create_message(p, s, &env).unwrap()
    });
    let err = assert_rejected(&mut net, 2, in_m0_group(gid, data));
    assert!(err.contains("non-owner"), "{err}");
}

#[test]
fn commit_from_a_non_owner_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = file_setup(dir.path());
    let gid = send_group_id(&d, "m0");
    let data = forge_in(dir.path(), "m1", gid, |g, p, s| {
        g.commit_builder()
            .force_self_update(true)
            .load_psks(p.storage())
            .unwrap()
            .build(p.rand(), p.crypto(), s, |_| true)
            .unwrap()
            .stage_commit(p)
            .unwrap()
            .into_commit()
    });
    let err = assert_rejected(&mut net, 2, in_m0_group(gid, data));
    assert!(err.contains("non-owner"), "{err}");
}

#[test]
fn remove_proposal_from_a_non_owner_is_rejected_by_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = file_setup(dir.path());
    let gid = send_group_id(&d, "m0");
    let data = forge_in(dir.path(), "m1", gid, |g, p, s| {
        g.propose_remove_member(p, s, LeafNodeIndex::new(2))
            .unwrap()
            .0
    });
    // The owner processes proposals in its own Send Group at once.
    let err = assert_rejected(&mut net, 0, in_m0_group(gid, data));
    assert!(err.contains("Update proposal"), "{err}");
}

#[test]
fn commit_referencing_a_non_owners_remove_proposal_is_not_merged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = file_setup(dir.path());
    let gid = send_group_id(&d, "m0");
    let input = |seq: u64, data: Vec<u8>| Input::GroupMessage {
        owner: "m0".into(),
        group_id: hex::encode(gid),
        seq: Some(seq),
        data,
    };
    let proposal = forge_in(dir.path(), "m1", gid, |g, p, s| {
        g.propose_remove_member(p, s, LeafNodeIndex::new(2))
            .unwrap()
            .0
    });
    let sg = |net: &Net| {
        net.engines[2]
            .status(&d)
            .unwrap()
            .send_groups
            .into_iter()
            .find(|g| g.owner == "m0")
            .unwrap()
    };
    let epoch = sg(&net).epoch.unwrap();
    // m2 does not own the group: the proposal is kept unprocessed until a commit needs it.
    net.engines[2]
        .handle(input(9, proposal.clone()), 99_000)
        .unwrap();
    assert_eq!(sg(&net).waiting.len(), 1);
    assert_eq!(sg(&net).waiting[0].waits_for, WaitReason::Commit(epoch));
    // A (hostile) owner commits it by reference.
    let commit = forge_in(dir.path(), "m0", gid, |g, p, s| {
        let msg = MlsMessageIn::tls_deserialize_exact(&proposal).unwrap();
        let processed = g
            .process_message(p, msg.try_into_protocol_message().unwrap())
            .unwrap();
        let ProcessedMessageContent::ProposalMessage(qp) = processed.into_content() else {
            panic!("not a proposal");
        };
        g.store_pending_proposal(p.storage(), *qp).unwrap();
        g.commit_builder()
            .consume_proposal_store(true)
            .force_self_update(true)
            .load_psks(p.storage())
            .unwrap()
            .build(p.rand(), p.crypto(), s, |_| true)
            .unwrap()
            .stage_commit(p)
            .unwrap()
            .into_commit()
    });
    net.engines[2].handle(input(10, commit), 99_000).unwrap();
    // The proposal was processed, rejected and dropped; the commit was not merged and waits
    // for a proposal that will never come.
    let after = sg(&net);
    assert_eq!(after.epoch, Some(epoch));
    assert_eq!(after.waiting.len(), 1, "{:?}", after.waiting);
    assert!(after.waiting[0].is_commit);
    assert_eq!(after.waiting[0].waits_for, WaitReason::Proposal(epoch));
    assert!(!net.engines[2].dgroups().unwrap()[0].we_are_removed);
}

#[test]
fn commit_whose_aad_differs_from_its_psk_proposals_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = file_setup(dir.path());
    let gid = send_group_id(&d, "m0");
    // The owner names m1's epoch 1 (which m2 holds) in the AAD but imports nothing.
    let named = dmls_client::engine::PskId {
        epoch: 1,
        group_id: send_group_id(&d, "m1"),
    };
    let data = forge_in(dir.path(), "m0", gid, |g, p, s| {
        g.set_aad(named.to_bytes().to_vec());
        g.commit_builder()
            .force_self_update(true)
            .load_psks(p.storage())
            .unwrap()
            .build(p.rand(), p.crypto(), s, |_| true)
            .unwrap()
            .stage_commit(p)
            .unwrap()
            .into_commit()
    });
    let err = assert_rejected(&mut net, 2, in_m0_group(gid, data));
    assert!(err.contains("differs from its PSK proposals"), "{err}");
}

#[test]
fn welcome_sent_by_a_non_owner_leaf_is_rejected() {
    let (mut net, _) = setup();
    let d = DGroupId([5; 16]);
    let c = config(d, &["m0", "m1", "m2"]).encode().unwrap();
    let owner = Attacker::new("m0");
    let insider = Attacker::new("m1");
    // The owner adds the insider (leaf 1), who then adds m2 itself.
    let kp = MlsMessageOut::from(insider.key_package())
        .tls_serialize_detached()
        .unwrap();
    let mut g = owner.group(&send_group_id(&d, "m0"), Some(c));
    let w = owner.add(&mut g, &kp);
    let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(&w).unwrap().extract()
    else {
        panic!("not a welcome");
    };
    let jc = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .build();
    let mut ig = StagedWelcome::new_from_welcome(&insider.provider, &jc, w, None)
        .unwrap()
        .into_group(&insider.provider)
        .unwrap();
    let victim_kp = net.engines[2].generate_key_packages(1).unwrap().remove(0);
    let w = insider.add(&mut ig, &victim_kp);
    let err = assert_rejected(
        &mut net,
        2,
        Input::Welcome {
            inbox_id: Some(1000),
            from: "m1".into(),
            data: w,
        },
    );
    assert!(err.contains("leaf 0"), "{err}");
}

#[test]
fn commit_adding_a_client_outside_the_dgroup_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = file_setup(dir.path());
    let gid = send_group_id(&d, "m0");
    // A well-formed key package of a client the config does not list.
    let kp = Attacker::new("evil").key_package();
    // The owner adds it in an otherwise valid commit (path, empty AAD).
    let data = forge_in(dir.path(), "m0", gid, |g, p, s| {
        g.set_aad(Vec::new());
        g.commit_builder()
            .propose_adds(vec![kp])
            .force_self_update(true)
            .load_psks(p.storage())
            .unwrap()
            .build(p.rand(), p.crypto(), s, |_| true)
            .unwrap()
            .stage_commit(p)
            .unwrap()
            .into_commit()
    });
    let err = assert_rejected(&mut net, 2, in_m0_group(gid, data));
    assert!(err.contains("not a member of the DGroup config"), "{err}");
}

/// `who`'s credential with the key of `signer`: another identity key under the same name.
fn new_signer<'a>(
    who: &str,
    signer: &'a SignatureKeyPair,
) -> NewSignerBundle<'a, SignatureKeyPair> {
    NewSignerBundle {
        signer,
        credential_with_key: CredentialWithKey {
            credential: BasicCredential::new(who.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        },
    }
}

#[test]
fn leaf_refresh_that_changes_the_identity_key_is_rejected_by_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = file_setup(dir.path());
    let gid = send_group_id(&d, "m0");
    let data = forge_in(dir.path(), "m1", gid, |g, p, s| {
        let other = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let bundle = new_signer("m1", &other);
        g.propose_self_update_with_new_signer(p, s, bundle, LeafNodeParameters::default())
            .unwrap()
            .0
    });
    // The owner processes leaf refreshes in its own Send Group at once.
    let err = assert_rejected(&mut net, 0, in_m0_group(gid, data));
    assert!(err.contains("changes the member's identity key"), "{err}");
}

#[test]
fn commit_that_changes_its_owners_identity_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, d) = file_setup(dir.path());
    let gid = send_group_id(&d, "m0");
    let data = forge_in(dir.path(), "m0", gid, |g, p, s| {
        let other = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let bundle = new_signer("m0", &other);
        g.self_update_with_new_signer(p, s, bundle, LeafNodeParameters::default())
            .unwrap()
            .into_commit()
    });
    let err = assert_rejected(&mut net, 1, in_m0_group(gid, data));
    assert!(err.contains("changes its owner's identity key"), "{err}");
}

#[test]
fn welcome_of_an_owner_nobody_added_is_held_and_not_joined() {
    // A relay making up a member: a Welcome of "m3" whose config is the DGroup's, plus m3.
    let (mut net, d) = setup();
    let team = DGroupConfig {
        name: "team".into(),
        ..config(d, &["m0", "m1", "m2"])
    };
    let forged = team.with(&["m3"], &[]).encode().unwrap();
    let kp = net.engines[2].generate_key_packages(1).unwrap().remove(0);
    let w = Attacker::new("m3").welcome(&send_group_id(&d, "m3"), Some(forged), &kp);
    let before = snapshot(&net.engines[2]);
    let events = net.engines[2]
        .handle(
            Input::Welcome {
                inbox_id: Some(1000),
                from: "m3".into(),
                data: w,
            },
            99_000,
        )
        .unwrap();
    assert!(events.is_empty(), "{events:?}");
    let after = snapshot(&net.engines[2]);
    assert_eq!(after.statuses[0].held_welcomes, 1);
    assert_eq!(after.statuses[0].summary, before.statuses[0].summary);
    assert_eq!(
        after.statuses[0].send_groups,
        before.statuses[0].send_groups
    );
    assert_eq!(after.followed, before.followed);
    assert_eq!(after.outbox, before.outbox);
    // Traffic of the others does not release it: nobody added m3.
    net.engines[0].send(&d, TEXT_PLAIN, b"x", 100_000).unwrap();
    net.settle(100_000);
    let st = net.engines[2].status(&d).unwrap();
    assert_eq!(st.held_welcomes, 1);
    assert!(!st.summary.members.contains(&"m3".to_string()));
}

#[test]
fn a_forged_key_package_of_an_added_member_is_refused_and_reported() {
    // m0 adds m3; the relay then hands m1 a key package of "m3" made with the relay's own key.
    let mut net = Net::new(4, 4, 21);
    let d = net.engines[0]
        .create_dgroup("team", &["m1".to_string(), "m2".to_string()], 1000)
        .unwrap();
    net.settle(1000);
    net.engines[0].add(&d, &["m3".to_string()], 2000).unwrap();
    // m0's claim takes a real key package; everyone merges m0's commits, which show m3's key.
    net.settle_leaving(2000);
    let forged = MlsMessageOut::from(Attacker::new("m3").key_package())
        .tls_serialize_detached()
        .unwrap();
    let m3 = net.index("m3");
    // The stock is claimed from its end.
    net.stock[m3].push(forged);
    net.engines[1].retry_missing_members().unwrap();
    net.settle_leaving(2000);
    let st = net.engines[1].status(&d).unwrap();
    assert!(
        st.key_changes.iter().any(|k| k.client_id == "m3"),
        "{:?}",
        st.key_changes
    );
    assert!(net.events[1].iter().any(|e| matches!(e,
        dmls_client::engine::Event::KeyChanged { change, .. } if change.client_id == "m3")));
    // Nothing of m1 is encrypted to the forged key: m3 is not in m1's Send Group.
    let own = st.send_groups.iter().find(|g| g.owner == "m1").unwrap();
    assert!(
        !own.members.contains(&"m3".to_string()),
        "{:?}",
        own.members
    );
    assert!(st.pending_adds.contains(&"m3".to_string()));
}

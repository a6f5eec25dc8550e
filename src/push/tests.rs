use super::*;
use crate::blob::{Algorithm, Compression};
use crate::image::{ArchiveStream, Image};
use crate::progress::{LayerOutcome, Reporter};
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// An in-memory registry: blobs per repository, manifests per tag, uploads counted.
#[derive(Default)]
struct FakeRegistry {
    blobs: Mutex<HashMap<(String, Digest), Bytes>>,
    manifests: Mutex<HashMap<(String, String), Bytes>>,
    uploads: AtomicUsize,
    heads: AtomicUsize,
    /// Answer the next streamed upload as the client does when the registry lost more than
    /// its resend window.
    lose_next_upload: AtomicBool,
    /// Streamed uploads running now, and the most that ran at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl FakeRegistry {
    async fn receive(
        &self,
        repository: &str,
        body: &mut mpsc::Receiver<io::Result<Bytes>>,
        expected: Option<&Digest>,
    ) -> Result<StoredBlob, RegistryError> {
        let mut data = Vec::new();
        while let Some(chunk) = body.recv().await {
            data.extend_from_slice(&chunk.map_err(|e| fake_error(format!("upload aborted: {e}")))?);
        }
        if self.lose_next_upload.swap(false, Ordering::Relaxed) {
            return Err(RegistryError::UploadLost {
                registry: "127.0.0.1:5000".into(),
                repository: repository.into(),
                received: data.len() as u64,
                kept: 0,
                window_start: 1,
                window: 1,
            });
        }
        let digest = Digest::sha256_of(&data);
        if expected.is_some_and(|e| *e != digest) {
            return Err(fake_error(format!(
                "digest {digest} is not the expected {expected:?}"
            )));
        }
        self.uploads.fetch_add(1, Ordering::Relaxed);
        let size = data.len() as u64;
        self.blobs
            .lock()
            .unwrap()
            .insert((repository.into(), digest.clone()), Bytes::from(data));
        Ok(StoredBlob { digest, size })
    }
}

fn fake_error(message: String) -> RegistryError {
    RegistryError::Protocol {
        operation: "fake registry".into(),
        message,
    }
}

impl BlobStore for FakeRegistry {
    async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        self.heads.fetch_add(1, Ordering::Relaxed);
        let blobs = self.blobs.lock().unwrap();
        Ok(blobs
            .get(&(repository.into(), digest.clone()))
            .map(|b| b.len() as u64))
    }

    async fn mount_blob(&self, repository: &str, digest: &Digest, from: &str) -> Result<bool, RegistryError> {
        let mut blobs = self.blobs.lock().unwrap();
        let Some(blob) = blobs.get(&(from.into(), digest.clone())).cloned() else {
            return Ok(false);
        };
        blobs.insert((repository.into(), digest.clone()), blob);
        Ok(true)
    }

    async fn push_blob_stream(
        &self,
        repository: &str,
        mut body: mpsc::Receiver<io::Result<Bytes>>,
        expected: Option<&Digest>,
        _once: bool,
    ) -> Result<StoredBlob, RegistryError> {
        let running = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(running, Ordering::SeqCst);
        let result = self.receive(repository, &mut body, expected).await;
        // Held a moment, as a registry committing a blob does, so that uploads overlap.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn push_blob_bytes(&self, repository: &str, bytes: Bytes) -> Result<StoredBlob, RegistryError> {
        let digest = Digest::sha256_of(&bytes);
        let size = bytes.len() as u64;
        self.blobs
            .lock()
            .unwrap()
            .insert((repository.into(), digest.clone()), bytes);
        Ok(StoredBlob { digest, size })
    }

    async fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        _: &MediaType,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let blobs = self.blobs.lock().unwrap();
        let digest_at =
            |value: &serde_json::Value| -> Digest { value["digest"].as_str().unwrap().parse().unwrap() };
        let mut needed = vec![digest_at(&manifest["config"])];
        needed.extend(manifest["layers"].as_array().unwrap().iter().map(digest_at));
        if let Some(missing) = needed
            .iter()
            .find(|d| !blobs.contains_key(&(repository.into(), (*d).clone())))
        {
            return Err(fake_error(format!("MANIFEST_BLOB_UNKNOWN {missing}")));
        }
        let digest = Digest::sha256_of(&bytes);
        let mut manifests = self.manifests.lock().unwrap();
        manifests.insert((repository.into(), tag.into()), bytes.clone());
        manifests.insert((repository.into(), digest.to_string()), bytes);
        Ok(digest)
    }

    async fn get_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        _target: bool,
    ) -> Result<Option<(String, Bytes)>, RegistryError> {
        let manifests = self.manifests.lock().unwrap();
        Ok(manifests
            .get(&(repository.into(), tag_or_digest.into()))
            .map(|bytes| {
                let manifest: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                (
                    manifest["mediaType"].as_str().unwrap_or_default().to_string(),
                    bytes.clone(),
                )
            }))
    }

    async fn get_config(
        &self,
        repository: &str,
        digest: &Digest,
        _target: bool,
    ) -> Result<Option<Bytes>, RegistryError> {
        let blobs = self.blobs.lock().unwrap();
        Ok(blobs.get(&(repository.into(), digest.clone())).cloned())
    }
}

/// Layers with some structure, distinct per index.
fn layer_tar(index: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for file in 0..3 {
        let data = format!("layer {index} file {file}\n").repeat(5000 * (file + 1));
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!("nix/store/x-{index}/f{file}"),
                data.as_bytes(),
            )
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// A streamLayeredImage-shaped archive: `<diff_id>/layer.tar`..., config, manifest.json last.
fn archive(layers: &[Vec<u8>], corrupt_layer: Option<usize>) -> (Vec<u8>, Vec<Digest>) {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::sha256_of(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let config_name = format!("{}.json", Digest::sha256_of(&config).hex());
    let mut builder = tar::Builder::new(Vec::new());
    let mut names = Vec::new();
    for (index, (layer, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        let mut data = layer.clone();
        if corrupt_layer == Some(index) {
            data[600] ^= 1;
        }
        let name = format!("{}/layer.tar", diff_id.hex());
        append(&mut builder, &name, &data);
        names.push(name);
    }
    append(&mut builder, &config_name, &config);
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["x:y"], "Layers": names}]);
    append(
        &mut builder,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    (builder.into_inner().unwrap(), diff_ids)
}

fn append(builder: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, data).unwrap();
}

fn spec(format: ManifestFormat, compression: Compression) -> PushSpec {
    PushSpec {
        registry: "127.0.0.1:5000".into(),
        repository: "app".into(),
        tag: Some("v1".parse().unwrap()),
        format,
        compression,
        jobs: 2,
        workers: 2,
        reuse_from: Vec::new(),
        allow_arch: false,
    }
}

fn stream_of(bytes: Vec<u8>) -> Image {
    Image::Stream(ArchiveStream {
        description: "test archive".into(),
        reader: Box::new(io::Cursor::new(bytes)),
        finish: Box::new(|_| Ok(())),
        identity: None,
    })
}

fn file_image(dir: &std::path::Path, bytes: &[u8]) -> Image {
    let path = dir.join("image.tar");
    std::fs::write(&path, bytes).unwrap();
    let source = crate::image::detect(path.to_str().unwrap(), crate::image::SourceKind::Auto).unwrap();
    source.open(&Reporter::plain()).unwrap()
}

async fn run(
    store: &Arc<FakeRegistry>,
    image: Image,
    spec: &PushSpec,
    cache_dir: &std::path::Path,
) -> Result<Pushed, PushError> {
    let cache = Arc::new(Cache::with_root(Some(cache_dir.to_path_buf()), Reporter::plain()));
    push(store.clone(), image, spec, cache, Reporter::plain()).await
}

fn check_blobs(store: &FakeRegistry, pushed: &Pushed, layers: &[Vec<u8>], diff_ids: &[Digest]) {
    let blobs = store.blobs.lock().unwrap();
    for ((layer, pushed_layer), diff_id) in layers.iter().zip(&pushed.layers).zip(diff_ids) {
        assert_eq!(&pushed_layer.diff_id, diff_id);
        let blob = &blobs[&("app".to_string(), pushed_layer.digest.clone())];
        let mut plain = Vec::new();
        match pushed_layer.algorithm {
            Algorithm::Gzip => flate2::read::MultiGzDecoder::new(&blob[..])
                .read_to_end(&mut plain)
                .unwrap(),
            Algorithm::Zstd => zstd::stream::read::Decoder::new(&blob[..])
                .unwrap()
                .read_to_end(&mut plain)
                .unwrap(),
        };
        assert_eq!(&plain, layer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_push_then_warm_push_uploads_nothing() {
    let layers: Vec<Vec<u8>> = (0..4).map(layer_tar).collect();
    let (bytes, diff_ids) = archive(&layers, None);
    let store = Arc::new(FakeRegistry::default());
    let cache = tempfile::tempdir().unwrap();
    let spec = spec(ManifestFormat::Docker, Compression::default());
    let pushed = run(&store, stream_of(bytes.clone()), &spec, cache.path())
        .await
        .unwrap();
    assert!(pushed.layers.iter().all(|l| l.outcome == LayerOutcome::Uploaded));
    assert_eq!(store.uploads.load(Ordering::Relaxed), 4);
    check_blobs(&store, &pushed, &layers, &diff_ids);
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.manifests.lock().unwrap()[&("app".to_string(), "v1".to_string())])
            .unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(manifest["config"]["digest"], pushed.config_digest.as_str());
    assert_eq!(
        manifest["layers"][3]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(
        pushed.reference.to_string(),
        format!("127.0.0.1:5000/app@{}", pushed.manifest_digest)
    );

    let again = run(&store, stream_of(bytes), &spec, cache.path()).await.unwrap();
    assert!(
        again.layers.iter().all(|l| l.outcome == LayerOutcome::Skipped),
        "{:?}",
        again.layers
    );
    assert_eq!(store.uploads.load(Ordering::Relaxed), 4, "the warm push uploaded");
    assert_eq!(again.manifest_digest, pushed.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_tar_file_matches_the_stream_result_and_mounts_across_repositories() {
    let layers: Vec<Vec<u8>> = (0..3).map(layer_tar).collect();
    let (bytes, diff_ids) = archive(&layers, None);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeRegistry::default());
    let spec_a = spec(
        ManifestFormat::Oci,
        Compression::new(Algorithm::Zstd, None).unwrap(),
    );
    let first = run(&store, file_image(dir.path(), &bytes), &spec_a, dir.path())
        .await
        .unwrap();
    check_blobs(&store, &first, &layers, &diff_ids);
    // Deterministic compression: the stream path gives the same blobs in a fresh cache.
    let fresh = tempfile::tempdir().unwrap();
    let other = Arc::new(FakeRegistry::default());
    let streamed = run(&other, stream_of(bytes.clone()), &spec_a, fresh.path())
        .await
        .unwrap();
    assert_eq!(streamed.manifest_digest, first.manifest_digest);

    let spec_b = PushSpec {
        repository: "other".into(),
        ..spec_a
    };
    let mounted = run(&store, file_image(dir.path(), &bytes), &spec_b, dir.path())
        .await
        .unwrap();
    assert!(
        mounted.layers.iter().all(|l| l.outcome == LayerOutcome::Mounted),
        "{:?}",
        mounted.layers
    );
    assert_eq!(store.uploads.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_not_matching_its_name_is_refused_and_nothing_is_tagged() {
    let layers: Vec<Vec<u8>> = (0..3).map(layer_tar).collect();
    let (bytes, diff_ids) = archive(&layers, Some(1));
    let store = Arc::new(FakeRegistry::default());
    let cache = tempfile::tempdir().unwrap();
    let spec = spec(ManifestFormat::Docker, Compression::default());
    let err = run(&store, stream_of(bytes.clone()), &spec, cache.path())
        .await
        .unwrap_err();
    let text = format!("{err}");
    assert!(
        text.contains(diff_ids[1].as_str()) && text.contains("corrupt"),
        "{text}"
    );
    assert!(store.manifests.lock().unwrap().is_empty());
    // The indexed path reads the layer and finds the same.
    let dir = tempfile::tempdir().unwrap();
    let err = run(&store, file_image(dir.path(), &bytes), &spec, cache.path())
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("corrupt"), "{err}");
    assert!(store.manifests.lock().unwrap().is_empty());
}

#[test]
fn zstd_needs_the_oci_format() {
    let err = spec(
        ManifestFormat::Docker,
        Compression::new(Algorithm::Zstd, None).unwrap(),
    )
    .validate()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "zstd layers need --format oci: Docker v2s2 manifests only carry gzip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_upload_is_read_again_from_an_indexed_image_and_reported_typed_from_a_stream() {
    let layers: Vec<Vec<u8>> = (0..2).map(layer_tar).collect();
    let (bytes, diff_ids) = archive(&layers, None);
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(ManifestFormat::Docker, Compression::default());

    let store = Arc::new(FakeRegistry::default());
    store.lose_next_upload.store(true, Ordering::Relaxed);
    let pushed = run(&store, file_image(dir.path(), &bytes), &spec, dir.path())
        .await
        .unwrap();
    assert!(
        !store.lose_next_upload.load(Ordering::Relaxed),
        "no upload was lost"
    );
    check_blobs(&store, &pushed, &layers, &diff_ids);
    assert_eq!(store.uploads.load(Ordering::Relaxed), 2);

    // A stream cannot be read twice: the caller gets the registry's error, typed.
    let store = Arc::new(FakeRegistry::default());
    store.lose_next_upload.store(true, Ordering::Relaxed);
    let fresh = tempfile::tempdir().unwrap();
    let err = run(&store, stream_of(bytes), &spec, fresh.path())
        .await
        .unwrap_err();
    assert!(err.is_upload_lost(), "{err:?}");
    match &err {
        PushError::Registry { source, .. } => {
            assert!(
                matches!(**source, RegistryError::UploadLost { kept: 0, .. }),
                "{source:?}"
            )
        }
        other => panic!("not a registry error: {other:?}"),
    }
    assert!(store.manifests.lock().unwrap().is_empty());
}

/// `--jobs` layers are read at once, and one upload more may be committing meanwhile (the fake
/// registry takes 20 ms to commit a blob): the next layer is read while the previous one
/// commits, so even one job has two uploads at once, and never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_is_read_while_the_previous_upload_commits_within_jobs_and_one() {
    let layers: Vec<Vec<u8>> = (0..6).map(layer_tar).collect();
    let (bytes, diff_ids) = archive(&layers, None);
    let dir = tempfile::tempdir().unwrap();
    for jobs in [1, 3] {
        let spec = PushSpec {
            jobs,
            ..spec(ManifestFormat::Docker, Compression::default())
        };
        for image in [file_image(dir.path(), &bytes), stream_of(bytes.clone())] {
            let store = Arc::new(FakeRegistry::default());
            let fresh = tempfile::tempdir().unwrap();
            let pushed = run(&store, image, &spec, fresh.path()).await.unwrap();
            check_blobs(&store, &pushed, &layers, &diff_ids);
            let most = store.most_in_flight.load(Ordering::SeqCst);
            assert!(
                (2..=jobs + 1).contains(&most),
                "{most} uploads at once with --jobs {jobs}"
            );
        }
    }
}

/// The turns behind that: a layer whose reading ended gives its turn to the next while its
/// upload runs on, and uploads at once stay within `jobs + 1`.
#[tokio::test]
async fn a_turn_to_read_passes_on_when_a_reading_ends_and_uploads_stay_within_jobs_and_one() {
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tokio::time::timeout;
    let mut uploads = upload::Uploads::new(2);
    let waits = Duration::from_millis(50);
    async fn turn(uploads: &mut upload::Uploads, waits: Duration, why: &str) -> upload::Reading {
        let reading = timeout(waits, uploads.reserve()).await.expect(why);
        reading.expect("no upload failed")
    }
    async fn no_turn(uploads: &mut upload::Uploads, waits: Duration, why: &str) {
        assert!(timeout(waits, uploads.reserve()).await.is_err(), "{why}");
    }
    // Layer `index`: its reading ends on the first sender, its upload on the second.
    let start = |uploads: &mut upload::Uploads, index: usize, reading: upload::Reading| {
        let (read_tx, read_rx) = oneshot::channel::<()>();
        let (end_tx, end_rx) = oneshot::channel::<()>();
        uploads.spawn(async move {
            let _ = read_rx.await;
            drop(reading);
            let _ = end_rx.await;
            let digest = Digest::sha256_of(&[index as u8]);
            Ok((
                index,
                PushedLayer {
                    diff_id: digest.clone(),
                    digest,
                    size: 1,
                    algorithm: Algorithm::Gzip,
                    outcome: LayerOutcome::Uploaded,
                },
            ))
        });
        (read_tx, end_tx)
    };
    let reading = turn(&mut uploads, waits, "a first turn").await;
    let (read0, end0) = start(&mut uploads, 0, reading);
    let reading = turn(&mut uploads, waits, "a second turn").await;
    let (read1, end1) = start(&mut uploads, 1, reading);
    no_turn(&mut uploads, waits, "two layers are being read").await;
    read0.send(()).unwrap();
    let reading = turn(
        &mut uploads,
        waits,
        "layer 0 was read: its turn passes on while its upload runs",
    )
    .await;
    let (read2, end2) = start(&mut uploads, 2, reading);
    read1.send(()).unwrap();
    no_turn(
        &mut uploads,
        waits,
        "three uploads run (jobs + 1), though only one layer is being read",
    )
    .await;
    end0.send(()).unwrap();
    drop(turn(&mut uploads, waits, "layer 0's upload ended").await);
    read2.send(()).unwrap();
    for end in [end1, end2] {
        end.send(()).unwrap();
    }
    let done = uploads.finish().await.unwrap();
    assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
}

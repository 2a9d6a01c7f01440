// Check a dfg receipt, and that the ledger only grew, with no trust in the server and
// no dfg code: docs/ledger-format.md implemented with @noble/curves and @noble/hashes.
//
//   node verify.mjs receipt RECEIPT.json CHECKPOINT_KEY [YOUR_PUBLIC.jwk]
//   node verify.mjs grew URL CHECKPOINT_KEY OLD_CHECKPOINT.txt
//
// receipt: steps 1-5 of docs/integration-level-1.md section 7 (step 4, the JWS, only
// for an Ed25519 key). grew: fetches GET /v1/checkpoint and the RFC 9162 consistency
// proof from the size of a checkpoint saved before (a GET /v1/checkpoint answer).
import { readFileSync } from 'node:fs';
import { ed25519 } from '@noble/curves/ed25519.js';
import { sha256 } from '@noble/hashes/sha2.js';

const te = new TextEncoder();
const fail = (why) => { throw new Error(why); };
const eq = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const cat = (...parts) => Uint8Array.from(parts.flatMap((p) => [...p]));
const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => (/^([0-9a-f]{64})$/.test(s) ? new Uint8Array(Buffer.from(s, 'hex')) : fail(`not a lower-case hash: ${s}`));
const b64 = (s) => {
  const b = Buffer.from(s, 'base64');
  return b.toString('base64') === s ? new Uint8Array(b) : fail(`not canonical base64: ${s}`);
};
const b64url = (s) => {
  const b = Buffer.from(s, 'base64url');
  return b.toString('base64url') === s ? new Uint8Array(b) : fail(`not canonical base64url: ${s}`);
};
// RFC 8785 for entries (no floats): members sorted, no white space
const canonical = (v) => (v === null || typeof v !== 'object' ? JSON.stringify(v)
  : Array.isArray(v) ? `[${v.map(canonical).join(',')}]`
  : `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`);
// Ed25519 as libsodium: strict RFC 8032 (zip215: false) and no small-order R or key
const smallOrder = (b) => { try { return ed25519.Point.fromBytes(b, true).isSmallOrder(); } catch { return false; } };
const edVerify = (sig, msg, pub) => sig.length === 64 && pub.length === 32 &&
  !smallOrder(sig.slice(0, 32)) && !smallOrder(pub) && ed25519.verify(sig, msg, pub, { zip215: false });

const node = (l, r) => sha256(cat([1], l, r));

// <origin>+<key hash hex>+<base64(0x01 || public key)>: split at the first two '+'
function verifierKey(vkey) {
  const i = vkey.indexOf('+'), j = vkey.indexOf('+', i + 1);
  if (i < 0 || j < 0) fail('a checkpoint key is name+hash+key');
  const name = vkey.slice(0, i), key = b64(vkey.slice(j + 1));
  if (key.length !== 33 || key[0] !== 1) fail('not an Ed25519 verifier key');
  const keyHash = sha256(cat(te.encode(name), [0x0a], key)).slice(0, 4);
  if (hex(keyHash) !== vkey.slice(i + 1, j)) fail('the key hash does not match the key');
  return { name, keyHash, pub: key.slice(1) };
}

// C2SP signed note: the text up to the blank line, then "— <name> base64(hash || sig)" lines
function checkpoint(note, key) {
  const k = note.indexOf('\n\n');
  if (k < 0 || !note.endsWith('\n')) fail('not a signed note');
  const text = note.slice(0, k + 1);
  const signed = note.slice(k + 2, -1).split('\n').some((line) => {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line) ?? fail(`not a signature line: ${line}`);
    const raw = b64(m[2]);
    return m[1] === key.name && eq(raw.slice(0, 4), key.keyHash) && edVerify(raw.slice(4), te.encode(text), key.pub);
  });
  if (!signed) fail('the checkpoint is not signed by the checkpoint key');
  const [origin, size, root] = text.split('\n');
  if (origin !== key.name || !/^[1-9][0-9]*$/.test(size)) fail('not this ledger\'s checkpoint');
  return { size: Number(size), root: b64(root) };
}

// RFC 9162 §2.1.3.2
function inclusionRoot(index, size, leaf, path) {
  if (!(index >= 0 && index < size)) fail('leaf index outside the tree');
  let fn = BigInt(index), sn = BigInt(size - 1), r = leaf;
  for (const p of path) {
    if (sn === 0n) fail('inclusion proof too long');
    if (fn & 1n || fn === sn) {
      r = node(p, r);
      if (!(fn & 1n)) while (!(fn & 1n) && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else r = node(r, p);
    fn >>= 1n; sn >>= 1n;
  }
  return sn === 0n ? r : fail('inclusion proof too short');
}

// RFC 9162 §2.1.4.2
function consistent(m, n, root1, root2, path) {
  if (m === n) return path.length === 0 && eq(root1, root2);
  if (!(m >= 1 && m < n) || path.length === 0) return false;
  const p = (m & (m - 1)) === 0 ? [root1, ...path] : path;
  let fn = BigInt(m - 1), sn = BigInt(n - 1);
  while (fn & 1n) { fn >>= 1n; sn >>= 1n; }
  let fr = p[0], sr = p[0];
  for (const c of p.slice(1)) {
    if (sn === 0n) return false;
    if (fn & 1n || fn === sn) {
      fr = node(c, fr); sr = node(c, sr);
      if (!(fn & 1n)) while (!(fn & 1n) && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else sr = node(sr, c);
    fn >>= 1n; sn >>= 1n;
  }
  return sn === 0n && eq(fr, root1) && eq(sr, root2);
}

function receipt(r, vkey, myJwk) {
  const allowed = ['seq', 'entry', 'leaf_hash', 'proof', 'checkpoint', 'jws', 'event'];
  Object.keys(r).forEach((k) => allowed.includes(k) || fail(`unexpected member ${k}`));
  const { leaf_index: index, tree_size: size, hashes } = r.proof;
  const cp = checkpoint(r.checkpoint, verifierKey(vkey));                        // 1
  if (cp.size !== size) fail('the proof is not for the checkpoint\'s tree');
  const leaf = sha256(cat([0], te.encode(r.entry)));                             // 2
  if (!eq(inclusionRoot(index, size, leaf, hashes.map(unhex)), cp.root)) fail('the inclusion proof does not lead to the signed root'); // 3
  const entry = JSON.parse(r.entry);
  if (canonical(entry) !== r.entry || entry.seq !== index + 1 || r.seq !== entry.seq) fail('the entry is not the one proved');
  if (myJwk) {                                                                   // 4
    const [h, p, s] = entry.tx.split('.');
    const header = JSON.parse(Buffer.from(b64url(h)).toString());
    const thumb = Buffer.from(sha256(te.encode(canonical({ crv: myJwk.crv, kty: myJwk.kty, x: myJwk.x })))).toString('base64url');
    if (header.kid.split('#').pop() !== thumb) fail(`signed with ${header.kid}, not with your key`);
    if (!edVerify(b64url(s), te.encode(`${h}.${p}`), b64url(myJwk.x))) fail('the transaction signature does not verify');
  }
  if (r.leaf_hash !== hex(leaf)) fail('leaf_hash is not the entry\'s');             // 5
  if ('jws' in r && r.jws !== entry.tx) fail('jws is not the entry\'s');
  const event = { aggregate: entry.aggregate, version: entry.version, type: entry.event, ts: entry.ts, data: entry.data };
  if ('event' in r && canonical(r.event) !== canonical(event)) fail('event is not the entry\'s');
  return `OK: entry ${entry.seq} (${entry.event} at ${entry.ts}) is in the tree of ${size} entries the checkpoint key signed`;
}

async function grew(url, vkey, oldNote) {
  const key = verifierKey(vkey);
  const old = checkpoint(oldNote, key);
  const now = checkpoint(await (await fetch(`${url}/v1/checkpoint`)).text(), key);
  const answer = await fetch(`${url}/v1/proofs/consistency?first=${old.size}&second=${now.size}`);
  const { hashes } = await answer.json();
  if (!consistent(old.size, now.size, old.root, now.root, hashes.map(unhex))) fail(`FORK: the tree of ${now.size} does not extend the one of ${old.size}`);
  return `OK: the signed tree of ${now.size} entries extends the one of ${old.size} you held`;
}

const [cmd, a, vkey, b] = process.argv.slice(2);
try {
  if (cmd === 'receipt') console.log(receipt(JSON.parse(readFileSync(a, 'utf8')), vkey, b && JSON.parse(readFileSync(b, 'utf8'))));
  else if (cmd === 'grew') console.log(await grew(a.replace(/\/$/, ''), vkey, readFileSync(b, 'utf8')));
  else fail('usage: node verify.mjs receipt RECEIPT.json KEY [MY.jwk] | grew URL KEY OLD_CHECKPOINT.txt');
} catch (e) {
  console.error(`does NOT verify: ${e.message}`);
  process.exit(1);
}

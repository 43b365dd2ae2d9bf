// Encodes a UTF-8 text file with the npm package gpt-3-encoder's own encode() and writes the ids,
// one per line.   node encode.js TEXT OUT.ids
// encode() concatenates arrays (quadratic in the text), so the text is fed in pieces, cut only at a
// lone '\n' between two non-space characters: there GPT-2's pattern makes the same pre-tokens
// whether or not the text continues (the '\n' is a pre-token of its own either way, and the
// pre-token before it ends at it either way).
'use strict'
const fs = require('fs')
const { encode } = require('gpt-3-encoder')

const [textPath, outPath] = process.argv.slice(2)
if (!textPath || !outPath) { console.error('usage: node encode.js TEXT OUT.ids'); process.exit(1) }
const text = fs.readFileSync(textPath, 'utf-8')
const out = []
let start = 0
const PIECE = 4096
while (start < text.length) {
  let end = Math.min(start + PIECE, text.length)
  while (end < text.length && !(text[end - 1] === '\n' && end - 2 >= start && /\S/u.test(text[end - 2]) &&
                                 /\S/u.test(text[end]))) end++
  for (const id of encode(text.slice(start, end))) out.push(id)
  start = end
}
fs.writeFileSync(outPath, out.map(id => `${id}\n`).join(''))
console.log(`gpt-3-encoder: ${textPath}: ${out.length} tokens`)

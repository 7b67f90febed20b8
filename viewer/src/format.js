// @ts-check
// Small formatting helpers; every text goes into the DOM through textContent, never innerHTML.

/** @typedef {import('./result').Finding} Finding */

/**
 * @param {string} tag
 * @param {{ className?: string, text?: unknown, attrs?: Record<string, unknown> }} [options]
 * @param {Array<Node | string | null | undefined>} [children]
 * @returns {HTMLElement}
 */
export function el(tag, { className, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

export function waiting(seconds) {
  if (seconds === undefined || seconds === null || Number.isNaN(Number(seconds))) return '—';
  const s = Math.max(0, Math.round(Number(seconds)));
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${String(minutes % 60).padStart(2, '0')} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

export function routeBadge(route) {
  const name = ['urgent', 'review', 'none'].includes(route) ? route : 'none';
  return el('span', { className: `badge ${name}`, text: route || 'none' });
}

export function scoreCell(score) {
  const value = Math.max(0, Math.min(100, Number(score) || 0));
  const bar = el('span', { className: 'bar', attrs: { 'aria-hidden': 'true' } }, [el('span')]);
  /** @type {HTMLElement} */ (bar.firstChild).style.width = `${value}%`;
  return el('span', { className: 'score', attrs: { title: `priority score ${value} of 100` } }, [
    el('span', { text: value }),
    bar,
  ]);
}

/** A finding as a short text (a study's finding, or a worklist row's).
 * @param {Pick<Finding, 'code' | 'probability' | 'positive' | 'applicable'>} finding */
export function findingText(finding) {
  // outside the model's scope: not computed, neither positive nor negative
  if (finding.applicable === false) return `${finding.code} n/a`;
  const p = Number(finding.probability);
  return `${finding.code} ${Number.isFinite(p) ? p.toFixed(2) : '?'}${finding.positive ? ' +' : ''}`;
}

export const VERDICTS = [
  { value: 'confirmed_miss', label: 'Confirmed miss', key: '1' },
  { value: 'false_positive', label: 'False positive', key: '2' },
  { value: 'already_reported', label: 'Already reported', key: '3' },
];

// What a first read says about a finding (contract 2's first_read.labels), in a reviewer's words.
export const REPORT_LABELS = [
  { value: 'present', label: 'present' },
  { value: 'uncertain', label: 'uncertain' },
  { value: 'negated', label: 'negated' },
  { value: 'not_mentioned', label: 'not mentioned' },
];

export function reportLabel(value) {
  return REPORT_LABELS.find((l) => l.value === value)?.label || String(value || 'not mentioned');
}

export function verdictLabel(value) {
  return VERDICTS.find((v) => v.value === value)?.label || value;
}

// The heat colour map of secondreader/outputs/overlay.py (black-purple-red-orange-yellow).
const STOPS = [0, 0.25, 0.5, 0.75, 1];
const COLOURS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

export function heatColour(t) {
  const x = Math.max(0, Math.min(1, t));
  let i = 0;
  while (i < STOPS.length - 2 && x > STOPS[i + 1]) i += 1;
  const f = (x - STOPS[i]) / (STOPS[i + 1] - STOPS[i]);
  return COLOURS[i].map((c, k) => Math.round(c + (COLOURS[i + 1][k] - c) * f));
}

export function drawLegend(canvas) {
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  for (let x = 0; x < width; x += 1) {
    const t = x / (width - 1);
    const [r, g, b] = heatColour(t);
    // Alpha as the layer has it: none below 0.2, full from 0.8 (drawn over a checker-free grey).
    const alpha = Math.max(0, Math.min(1, (t - 0.2) / 0.6));
    ctx.fillStyle = '#333';
    ctx.fillRect(x, 0, 1, height);
    ctx.fillStyle = `rgba(${r}, ${g}, ${b}, ${Math.max(alpha, 0.15)})`;
    ctx.fillRect(x, 0, 1, height);
  }
}

// What the packaged default routing rules mean (secondreader/worklist/routing.yaml); a site's own
// rules show their id only.
const RULES = {
  ineligible: 'not a study the models are made for',
  'screening-failed': 'the AI could not read an eligible image',
  'discordant-urgent': 'AI strongly positive, first read silent or negative',
  discordant: 'AI positive, first read silent or negative',
  concordant: 'the first read mentions every AI-positive finding',
  'ai-urgent': 'no first read yet; AI strongly positive',
  'ai-positive': 'no first read yet; AI positive',
  'ai-negative': 'no first read yet; AI negative',
  'no-routing-finding': 'no live model applies to this study (outside their scope, or shadow only)',
  'max-wait': 'waited longer than the maximum: escalated',
};

export function ruleText(rule) {
  return RULES[rule] || '';
}

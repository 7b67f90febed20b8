// @ts-check
// The study view: image + heatmap layer + regions, the first read with the discordant sentence
// highlighted, and a verdict per region.
import { api } from './api.js';
import {
  REPORT_LABELS, VERDICTS, drawLegend, el, findingText, reportLabel, routeBadge, ruleText, verdictLabel,
} from './format.js';
import { ImageView } from './imaging.js';

// Contract 2, as result.d.ts types it (generated from the JSON Schema: npm run types).
/** @typedef {import('./result').StudyView} Study a study as GET /v1/studies/{uid} answers */
/** @typedef {import('./result').StudyResult} StudyResult */
/** @typedef {import('./result').Finding} Finding */
/** @typedef {import('./result').Region} Region */
/** @typedef {import('./result').FirstRead} FirstRead */

const REVIEWER_KEY = 'secondreader.reviewer';

/** Finding codes with a heatmap for each SOP Instance UID and frame (1-based), from
 * artifacts.heatmaps: ``<code>.png`` is frame 1, ``<code>-frame<N>.png`` frame N. */
/** @param {StudyResult} result @returns {Map<string, Map<number, string[]>>} */
function heatmapsBySop(result) {
  const bySop = new Map();
  for (const path of result.artifacts?.heatmaps || []) {
    const parts = path.split('/');
    if (parts.length < 2) continue;
    const name = parts[parts.length - 1];
    const match = /^([a-z0-9_]+(?:-[a-z0-9_]+)*?)(?:-frame(\d+))?\.png$/.exec(name);
    if (!match) continue;
    const sop = parts[parts.length - 2];
    const frame = match[2] ? Number(match[2]) : 1;
    if (!bySop.has(sop)) bySop.set(sop, new Map());
    const frames = bySop.get(sop);
    if (!frames.has(frame)) frames.set(frame, []);
    frames.get(frame).push(match[1]);
  }
  return bySop;
}

/** The heatmap name of ``code`` on ``frame`` (what the API serves under /heatmaps/). */
function heatmapName(code, frame) {
  return frame > 1 ? `${code}-frame${frame}` : code;
}

/** Text split into plain runs and marked runs, one per evidence sentence found in it.
 * @param {string} text
 * @param {FirstRead['evidence']} evidence
 * @param {FirstRead['labels']} labels
 * @param {string[]} discordant
 * @returns {Node[]} */
function markedReport(text, evidence, labels, discordant) {
  const ranges = [];
  for (const [code, sentence] of Object.entries(evidence || {})) {
    if (!sentence) continue;
    let start = text.indexOf(sentence);
    if (start < 0) start = text.toLowerCase().indexOf(String(sentence).toLowerCase());
    if (start < 0) continue;
    ranges.push({ start, end: start + sentence.length, code });
  }
  ranges.sort((x, y) => x.start - y.start);
  const nodes = [];
  let at = 0;
  for (const range of ranges) {
    if (range.start < at) continue; // overlapping evidence: keep the first
    if (range.start > at) nodes.push(document.createTextNode(text.slice(at, range.start)));
    const isDiscordant = discordant.includes(range.code);
    nodes.push(el('mark', {
      className: isDiscordant ? 'discordant' : '',
      text: text.slice(range.start, range.end),
      attrs: {
        title: `${range.code}: ${labels?.[range.code] || 'mentioned'}${isDiscordant ? ' — discordant with the AI' : ''}`,
        'data-finding': range.code,
      },
    }));
    at = range.end;
  }
  if (at < text.length) nodes.push(document.createTextNode(text.slice(at)));
  return nodes;
}

// Why a finding takes no part in the priority: its model does not apply to this study (outside its
// scope), runs in shadow at this site, or (results from before modes) missed its targets.
/** @param {Finding} f */
function findingBadge(f) {
  if (f.applicable === false) {
    return el('span', { className: 'badge not-applicable', text: ' not applicable',
                        attrs: { title: 'This study is outside the model\'s scope: not computed, neither positive nor negative' } });
  }
  if (f.mode === 'shadow') {
    return el('span', { className: 'badge unvalidated', text: ' shadow: does not route',
                        attrs: { title: 'This model runs in shadow at this site: shown for review, never used for priority' } });
  }
  if (f.routes === false) {
    return el('span', { className: 'badge unvalidated', text: ' not validated: does not route',
                        attrs: { title: 'This model missed its validation targets: shown for review, never used for priority' } });
  }
  return null;
}

export class StudyView {
  constructor() {
    this.image = new ImageView(document.getElementById('viewport'),
      /** @type {HTMLCanvasElement} */ (document.getElementById('overlay')));
    /** @type {Study | null} */
    this.result = null;
    this.uid = null;
    this.sop = null;
    this.selected = null;
    this.message = document.getElementById('viewport-message');
    this.reviewer = /** @type {HTMLInputElement} */ (document.getElementById('reviewer'));
    this.reviewer.value = window.sessionStorage.getItem(REVIEWER_KEY) || '';
    this.reviewer.addEventListener('change', () => {
      window.sessionStorage.setItem(REVIEWER_KEY, this.reviewer.value.trim());
    });
    this.toggle = /** @type {HTMLInputElement} */ (document.getElementById('heat-toggle'));
    this.opacity = /** @type {HTMLInputElement} */ (document.getElementById('heat-opacity'));
    this.opacityValue = document.getElementById('heat-opacity-value');
    this.findingSelect = /** @type {HTMLSelectElement} */ (document.getElementById('heat-finding'));
    this.instanceSelect = /** @type {HTMLSelectElement} */ (document.getElementById('instance'));
    this.frameSelect = /** @type {HTMLSelectElement} */ (document.getElementById('frame'));
    this.frame = 1;
    this.toggle.addEventListener('change', () => this.applyOverlay());
    this.opacity.addEventListener('input', () => this.applyOverlay());
    this.findingSelect.addEventListener('change', () => this.loadLayer());
    this.instanceSelect.addEventListener('change', () => this.openInstance(this.instanceSelect.value));
    this.frameSelect.addEventListener('change', () => this.openFrame(Number(this.frameSelect.value)));
    document.getElementById('reset').addEventListener('click', () => this.image.reset());
    for (const button of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('[data-tool]'))) {
      button.addEventListener('click', () => this.setTool(button.dataset.tool));
    }
    drawLegend(document.getElementById('legend-bar'));
  }

  setTool(name) {
    this.image.setPrimaryTool(name);
    for (const button of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('[data-tool]'))) {
      button.setAttribute('aria-pressed', String(button.dataset.tool === name));
    }
  }

  applyOverlay() {
    const opacity = Number(this.opacity.value) / 100;
    this.opacityValue.textContent = `${this.opacity.value}%`;
    this.image.setOverlay({ visible: this.toggle.checked, opacity });
  }

  async open(uid) {
    this.uid = uid;
    this.selected = null;
    this.message.textContent = 'Loading…';
    document.getElementById('review-error').textContent = '';
    document.getElementById('first-read-error').textContent = '';
    let result;
    try {
      result = await api.study(uid);
    } catch (error) {
      this.message.textContent = `Could not load the study: ${error.message}`;
      return;
    }
    if (this.uid !== uid) return;
    this.result = result;
    this.renderSummary();
    this.renderFindings();
    this.renderRegions();
    this.renderReport();
    const screened = (result.instances || []).filter((i) => i.status === 'screened' && i.sop_instance_uid);
    this.instanceSelect.replaceChildren(...screened.map((inst, i) => el('option', {
      text: `${i + 1} of ${screened.length}`, attrs: { value: inst.sop_instance_uid } })));
    this.instanceSelect.closest('label').hidden = screened.length < 2;
    if (!screened.length) {
      this.message.textContent = `No screened image in this study (${result.status}${result.reason ? `: ${result.reason}` : ''}).`;
      return;
    }
    await this.openInstance(screened[0].sop_instance_uid);
  }

  async openInstance(sop, frame = undefined) {
    this.sop = sop;
    const frames = [...(heatmapsBySop(this.result).get(sop)?.keys() || [])].sort((x, y) => x - y);
    const inRegions = (this.result.regions || []).filter((r) => r.sop_instance_uid === sop).map((r) => r.frame ?? 1);
    const all = [...new Set([1, ...frames, ...inRegions])].sort((x, y) => x - y);
    this.frameSelect.replaceChildren(...all.map((f) => el('option', {
      text: `${f} of ${all.length}`, attrs: { value: String(f) } })));
    this.frameSelect.closest('label').hidden = all.length < 2;
    await this.openFrame(all.includes(frame) ? frame : all[0]);
  }

  /** One frame of the current instance: its pixels, its heatmap layers and its regions. */
  async openFrame(frame) {
    const sop = this.sop;
    this.frame = frame;
    this.frameSelect.value = String(frame);
    const codes = [...(heatmapsBySop(this.result).get(sop)?.get(frame) || [])];
    const positives = new Set((this.result.findings || []).filter((f) => f.positive).map((f) => f.code));
    codes.sort((x, y) => Number(positives.has(y)) - Number(positives.has(x)));
    this.findingSelect.replaceChildren(...codes.map((code) => el('option', { text: code, attrs: { value: code } })));
    this.findingSelect.disabled = codes.length < 2;
    this.image.setLayer(null);
    this.message.textContent = 'Loading image…';
    try {
      await this.image.open(api.dicomImageId(this.uid, sop, frame));
      this.message.textContent = '';
    } catch (error) {
      this.message.textContent = `The image could not be loaded (${error?.status ? `HTTP ${error.status}` : 'decoding failed'}).`;
    }
    this.showRegions();
    await this.loadLayer();
  }

  async loadLayer() {
    const code = this.findingSelect.value;
    if (!code) {
      this.image.setLayer(null);
      return;
    }
    try {
      const frame = this.frame;
      const bitmap = await api.heatmapLayer(this.uid, this.sop, heatmapName(code, frame));
      if (this.findingSelect.value === code && this.frame === frame) this.image.setLayer(bitmap);
    } catch (error) {
      this.image.setLayer(null);
    }
    this.applyOverlay();
    this.showRegions();
  }

  showRegions() {
    this.image.setRegions(
      (this.result?.regions || []).filter((r) => r.sop_instance_uid === this.sop && (r.frame ?? 1) === this.frame),
      this.selected,
    );
  }

  renderSummary() {
    const r = this.result;
    const priority = r.priority || /** @type {Partial<Study['priority']>} */ ({});
    const summary = document.getElementById('study-summary');
    summary.replaceChildren(
      el('span', { text: `score ${priority.score ?? 0}` }),
      routeBadge(priority.route),
      el('code', { text: priority.rule || '', attrs: { title: ruleText(priority.rule) } }),
      el('span', { className: 'muted', text: ruleText(priority.rule) }),
      el('span', { text: r.state ? `· ${String(r.state).replaceAll('_', ' ')}` : '' }),
    );
  }

  renderFindings() {
    const list = document.getElementById('findings');
    const discordant = this.result.first_read?.discordant || [];
    list.replaceChildren(...(this.result.findings || []).map((f) => el('li', {}, [
      el('strong', { text: findingText(f) }),
      el('span', { className: 'muted', text: `  operating point ${f.operating_point ?? '?'} · ${f.model || ''}` }),
      discordant.includes(f.code) ? el('span', { className: 'badge discordant', text: ' discordant' }) : null,
      findingBadge(f),
      f.applicable === false && f.not_applicable_reason
        ? el('div', { className: 'muted not-applicable-reason', text: f.not_applicable_reason })
        : null,
    ])));
    if (!list.children.length) list.append(el('li', { className: 'muted', text: 'No finding.' }));
  }

  renderRegions() {
    const list = document.getElementById('regions');
    const regions = this.result.regions || [];
    document.getElementById('regions-empty').hidden = regions.length > 0;
    const reviews = this.result.reviews || [];
    list.replaceChildren(...regions.map((region) => {
      const recorded = reviews.filter((r) => r.region_id === region.id);
      const item = el('li', {
        className: 'region',
        attrs: { 'data-region': region.id, 'aria-current': String(region.id === this.selected), tabindex: '-1' },
      }, [
        el('div', { className: 'head' }, [
          el('span', { className: 'id', text: region.id }),
          el('span', { text: `score ${Number(region.score).toFixed(2)}` }),
        ]),
        el('div', { className: 'meta', text: `${this.imageLabel(region.sop_instance_uid)}${this.frameLabel(region)}${region.finding} · rows ${region.bbox[0]}–${region.bbox[2]}, `
          + `columns ${region.bbox[1]}–${region.bbox[3]}${region.area_mm2 != null ? ` · ${Math.round(region.area_mm2)} mm²` : ''}` }),
        el('div', { className: 'verdicts', attrs: { role: 'group', 'aria-label': `Verdict for ${region.id}` } },
          VERDICTS.map((v) => {
            const latest = recorded.length ? recorded[recorded.length - 1].verdict : null;
            const button = el('button', { text: v.label, attrs: { type: 'button', 'data-verdict': v.value,
              'aria-pressed': String(latest === v.value), title: `${v.label} (${v.key} on the selected region)` } });
            button.addEventListener('click', (event) => {
              event.stopPropagation();
              this.select(region.id);
              this.record(region.id, v.value);
            });
            return button;
          })),
        el('ul', { className: 'recorded' }, recorded.map((r) => el('li', {
          text: `${verdictLabel(r.verdict)} — ${r.reviewer}${r.at ? `, ${new Date(r.at).toLocaleString()}` : ''}`,
        }))),
      ]);
      item.addEventListener('click', () => this.select(region.id));
      return item;
    }));
  }

  /** "frame 2 · " when the region's instance has regions on several frames, else nothing.
   * @param {Region} region */
  frameLabel(region) {
    const frames = new Set((this.result?.regions || [])
      .filter((r) => r.sop_instance_uid === region.sop_instance_uid).map((r) => r.frame ?? 1));
    return frames.size > 1 || (region.frame ?? 1) > 1 ? `frame ${region.frame ?? 1} · ` : '';
  }

  /** "image 2 · " when the study has several screened images, else nothing. */
  imageLabel(sop) {
    const screened = (this.result?.instances || []).filter((i) => i.status === 'screened');
    if (screened.length < 2) return '';
    return `image ${screened.findIndex((i) => i.sop_instance_uid === sop) + 1} · `;
  }

  renderReport() {
    const firstRead = this.result.first_read || /** @type {Partial<FirstRead>} */ ({});
    const discordant = firstRead.discordant || [];
    const status = document.getElementById('first-read-status');
    const parts = [el('span', { text: `Status: ${firstRead.status || 'none'}` })];
    for (const code of discordant) {
      const label = firstRead.labels?.[code] || 'not_mentioned';
      parts.push(el('span', { className: 'badge discordant',
        text: `${code}: AI positive, report ${label.replaceAll('_', ' ')}` }));
    }
    status.replaceChildren(...parts.flatMap((p, i) => (i ? [document.createTextNode(' '), p] : [p])));
    this.renderFirstReadTable(firstRead);
    const text = firstRead.text || '';
    document.getElementById('report-text').replaceChildren(
      ...(text ? markedReport(text, firstRead.evidence, firstRead.labels, discordant) : []));
  }

  /** Per finding: the AI's call, what the report says (the label in effect, where it comes from and
   * the sentence it was read from), and buttons to overrule a mis-read ("the labeler was wrong").
   * @param {Partial<FirstRead>} firstRead */
  renderFirstReadTable(firstRead) {
    const table = /** @type {HTMLTableElement} */ (document.getElementById('first-read-table'));
    const labels = firstRead.labels || {};
    const discordant = firstRead.discordant || [];
    const findings = new Map((this.result.findings || []).map((f) => [f.code, f]));
    // discordant findings first, then the AI's positives, then the rest
    const rank = (code) => (discordant.includes(code) ? 0 : findings.get(code)?.positive ? 1 : 2);
    const codes = Object.keys(labels).sort((x, y) => rank(x) - rank(y) || x.localeCompare(y));
    table.hidden = !codes.length || (firstRead.status || 'none') === 'none';
    table.tBodies[0].replaceChildren(...codes.map((code) => {
      const label = labels[code];
      const source = firstRead.sources?.[code] || (firstRead.evidence?.[code] ? 'labeler' : 'structured');
      const correction = firstRead.corrections?.[code];
      const sentence = firstRead.evidence?.[code];
      const finding = findings.get(code);
      const says = [el('span', { className: 'says', text: reportLabel(label) })];
      if (correction) {
        says.push(el('span', { className: 'source corrected',
          text: `corrected by ${correction.reviewer}; the labeler read ${reportLabel(correction.labeler_label)}` }));
      } else {
        says.push(el('span', { className: 'source',
          text: source === 'structured' ? 'structured label from the sender' : 'read by the labeler' }));
      }
      let quote;
      if (sentence) quote = el('blockquote', { text: `“${sentence}”`, attrs: { 'data-sentence': code } });
      else if (source !== 'structured') quote = el('p', { className: 'no-sentence', text: 'No sentence names it.' });
      const overrule = el('div', { className: 'overrule', attrs: { role: 'group',
        'aria-label': `What the report says about ${code}, if the labeler was wrong` } }, [
        el('span', { className: 'muted', text: 'Labeler wrong? The report says:' }),
        ...REPORT_LABELS.map((option) => {
          const button = el('button', { text: option.label, attrs: { type: 'button', 'data-label': option.value,
            'aria-pressed': String(option.value === label),
            title: option.value === label ? 'What the first read says now'
              : `Record that the labeler was wrong: the report says ${option.label}` } });
          button.addEventListener('click', () => {
            if (option.value !== label) this.correctFirstRead(code, option.value);
          });
          return button;
        }),
      ]);
      return el('tr', { className: discordant.includes(code) ? 'discordant' : '', attrs: { 'data-finding': code } }, [
        el('th', { attrs: { scope: 'row' } }, [
          el('span', { text: code }),
          discordant.includes(code) ? el('div', { className: 'badge discordant', text: 'discordant' }) : null,
        ]),
        el('td', { text: finding ? findingText(finding) : '—' }),
        el('td', {}, [...says, quote, overrule]),
      ]);
    }));
  }

  async correctFirstRead(code, label) {
    const error = document.getElementById('first-read-error');
    const reviewer = this.reviewer.value.trim();
    if (!reviewer) {
      error.textContent = 'Enter your name as reviewer (top right) before correcting the first read.';
      this.reviewer.focus();
      return;
    }
    window.sessionStorage.setItem(REVIEWER_KEY, reviewer);
    error.textContent = '';
    try {
      const updated = await api.correctFirstRead(this.uid, { finding: code, label, reviewer });
      if (updated && updated.study_instance_uid === this.uid) this.result = updated;
      else this.result = await api.study(this.uid);
      this.renderSummary();
      this.renderFindings();
      this.renderRegions();
      this.renderReport();
    } catch (failure) {
      error.textContent = `The correction was not recorded: ${failure.message}`;
    }
  }

  select(regionId) {
    this.selected = regionId;
    for (const item of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('#regions .region'))) {
      item.setAttribute('aria-current', String(item.dataset.region === regionId));
    }
    const region = (this.result?.regions || []).find((r) => r.id === regionId);
    if (region && region.sop_instance_uid !== this.sop) {
      this.instanceSelect.value = region.sop_instance_uid;
      this.openInstance(region.sop_instance_uid, region.frame ?? 1);
      return;
    }
    if (region && (region.frame ?? 1) !== this.frame) {
      this.openFrame(region.frame ?? 1);
      return;
    }
    this.showRegions();
  }

  step(delta) {
    const regions = this.result?.regions || [];
    if (!regions.length) return;
    const index = regions.findIndex((r) => r.id === this.selected);
    const next = regions[(index + delta + regions.length) % regions.length];
    this.select(next.id);
    document.querySelector(`#regions .region[data-region="${CSS.escape(next.id)}"]`)?.scrollIntoView({ block: 'nearest' });
  }

  async record(regionId, verdict) {
    const error = document.getElementById('review-error');
    const reviewer = this.reviewer.value.trim();
    if (!reviewer) {
      error.textContent = 'Enter your name as reviewer (top right) before recording a verdict.';
      this.reviewer.focus();
      return;
    }
    window.sessionStorage.setItem(REVIEWER_KEY, reviewer);
    error.textContent = '';
    try {
      const updated = await api.review(this.uid, { regionId, verdict, reviewer });
      if (updated && updated.study_instance_uid === this.uid) this.result = updated;
      else this.result = await api.study(this.uid);
      this.renderSummary();
      this.renderRegions();
      this.renderReport();
    } catch (failure) {
      error.textContent = `The verdict was not recorded: ${failure.message}`;
    }
  }

  onKey(event) {
    const key = event.key;
    if (key === 'w' || key === 'W') this.setTool('WindowLevel');
    else if (key === 'p' || key === 'P') this.setTool('Pan');
    else if (key === 'z' || key === 'Z') this.setTool('Zoom');
    else if (key === '0') this.image.reset();
    else if (key === '+' || key === '=') this.image.zoomBy(1.25);
    else if (key === '-') this.image.zoomBy(0.8);
    else if (event.shiftKey && key === 'ArrowRight') this.image.adjustWindow(1.15, 0);
    else if (event.shiftKey && key === 'ArrowLeft') this.image.adjustWindow(1 / 1.15, 0);
    else if (event.shiftKey && key === 'ArrowUp') this.image.adjustWindow(1, 0.05);
    else if (event.shiftKey && key === 'ArrowDown') this.image.adjustWindow(1, -0.05);
    else if (key === 'ArrowLeft') this.image.panBy(-20, 0);
    else if (key === 'ArrowRight') this.image.panBy(20, 0);
    else if (key === 'ArrowUp') this.image.panBy(0, -20);
    else if (key === 'ArrowDown') this.image.panBy(0, 20);
    else if (key === 'h' || key === 'H') {
      this.toggle.checked = !this.toggle.checked;
      this.applyOverlay();
    } else if (key === '[' || key === ']') {
      const step = key === ']' ? 10 : -10;
      this.opacity.value = String(Math.max(0, Math.min(100, Number(this.opacity.value) + step)));
      this.applyOverlay();
    } else if (key === 'j' || key === 'J') this.step(1);
    else if (key === 'k' || key === 'K') this.step(-1);
    else if (['1', '2', '3'].includes(key)) {
      if (this.selected) this.record(this.selected, VERDICTS[Number(key) - 1].value);
      else document.getElementById('review-error').textContent = 'Select a region first (J/K or click).';
    } else return false;
    event.preventDefault();
    return true;
  }
}

//! `<|ref|>…<|/ref|><|det|>[[…]]<|/det|>` spans: parsing, boxes, markdown clean-up, drawing, crops.
